"""A folder of class sub-folders holding JPEG/PNG files; the label is the sorted class index.

The files' bytes are stored as they are (no re-encoding), so decoding costs what it would
cost on the user's own images.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipetune.errors import SourceError
from pipetune.sources.common import IMAGE_SCHEMA, Inspection, Schema, example_encoder
from pipetune.spec import ImageFolderSource, Spec

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG, PNG


def schema_of(spec: Spec) -> Schema:
    """``{"image": bytes, "label": int64}``; nothing is read."""
    return dict(IMAGE_SCHEMA)


def inspect(spec: Spec) -> Inspection:
    """Lists the class sub-folders (sorted) and their images (sorted, searched recursively).

    ``detail`` holds each input's label, in input order.
    """
    source = _source(spec)
    root = spec.resolve(source.root).absolute()  # absolute: messages name it
    where = ("source", "root")
    if not root.is_dir():
        return _problem(where, f"{source.root!r} must be a folder, but {root} is not one")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        return _problem(
            where, f"{root} must hold one sub-folder per class, but has no sub-folder"
        )
    images: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(classes):
        found = sorted(p for p in folder.rglob("*") if _is_image(p, folder))
        images += found
        labels += [label] * len(found)
    if not images:
        names = [p.name for p in classes]
        return _problem(
            where,
            f"the class sub-folders {names} of {root} must hold "
            f"{'/'.join(sorted(IMAGE_SUFFIXES))} files, but hold none",
        )
    return Inspection(
        schema=schema_of(spec),
        inputs=tuple(images),
        facts=tuple(p.name for p in classes),
        detail=tuple(labels),
    )


def records(spec: Spec, inspection: Inspection) -> Iterator[bytes]:
    """One Example per image file: its raw bytes and its class index."""
    encode = example_encoder(IMAGE_SCHEMA)
    for path, label in zip(inspection.inputs, inspection.detail, strict=True):
        data = path.read_bytes()
        if not data.startswith(_MAGIC):
            raise SourceError(f"{path}: must be a JPEG or PNG file, but starts with {data[:8]!r}")
        yield encode({"image": [data], "label": [label]})


def _is_image(path: Path, folder: Path) -> bool:
    hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
    return not hidden and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _problem(where: tuple[str, ...], message: str) -> Inspection:
    return Inspection(schema=dict(IMAGE_SCHEMA), problems=((where, message),))


def _source(spec: Spec) -> ImageFolderSource:
    assert isinstance(spec.source, ImageFolderSource), spec.source.kind
    return spec.source

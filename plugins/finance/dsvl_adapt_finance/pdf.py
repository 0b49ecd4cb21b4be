"""Read PDF documents with a labels file, one page = one image, as rows for dsvl-adapt.

Layout (one folder per split)::

    DIR/train/labels.jsonl      one JSON object per question (see below)
    DIR/train/invoice-0001.pdf  the PDFs the labels name (sub-folders allowed)
    DIR/validation/...
    DIR/test/...

A ``labels.jsonl`` line::

    {"file": "invoice-0001.pdf", "page": 1,               # page is 1-based; default 1
     "question": "What is the invoice total?", "answer": "1,284.50",
     "id": "inv1-total",                                   # optional
     "meta": {"field": "total", "answers": ["1284.50"]}}   # optional: field, other accepted answers

Pages are rendered with pypdfium2 at ``DPI`` dots per inch (white background, annotations
and form fields drawn, as a reader shows them). A file that is not a PDF, is damaged or
encrypted, or lacks the page asked for is reported by name and line; ``data.on_bad_row``
decides whether that stops the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

LABELS = "labels.jsonl"
DPI = 144  # 2x the PDF unit (1/72 inch): small print stays legible


def render_page(path: str | Path, page: int = 1, *, dpi: float = DPI, document: Any = None) -> "Image.Image":  # noqa: F821
    """Render page ``page`` (1-based) of a PDF to an RGB image; raises DataError naming the file."""
    from dsvl_adapt.errors import DataError

    path = Path(path)
    try:
        import pypdfium2 as pdfium
    except ImportError:  # pragma: no cover - pypdfium2 is a dependency of this plugin
        raise DataError("reading PDF needs pypdfium2: pip install pypdfium2") from None
    own = document is None
    try:
        if own:
            document = open_pdf(path)
        count = len(document)
        if not 1 <= page <= count:
            raise DataError(f"{path}: has no page {page} (it has {count} page{'s' * (count != 1)}; pages count from 1)")
        try:
            pdf_page = document[page - 1]
            try:
                bitmap = pdf_page.render(scale=dpi / 72, may_draw_forms=True, fill_color=(255, 255, 255, 255))
                image = bitmap.to_pil().convert("RGB")
            finally:
                pdf_page.close()
        except pdfium.PdfiumError as exc:
            raise DataError(f"{path}: page {page} cannot be rendered ({exc})") from None
        return image
    finally:
        if own and document is not None:
            document.close()


def open_pdf(path: str | Path) -> Any:
    """Open a PDF with pypdfium2; a corrupt, encrypted or missing file is a DataError naming it."""
    import pypdfium2 as pdfium

    from dsvl_adapt.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: PDF file not found")
    try:
        return pdfium.PdfDocument(path)
    except pdfium.PdfiumError as exc:
        raise DataError(f"{path}: not a readable PDF ({exc}); it may be damaged, truncated or password-protected") \
            from None


def read_pdf_split(directory: str | Path, split: str, *, dpi: float = DPI) -> Iterator[dict[str, Any]]:
    """Yield raw rows of ``<directory>/<split>/labels.jsonl``, each page rendered to an image."""
    from dsvl_adapt.data.jsonl import iter_json_objects
    from dsvl_adapt.data.rows import resolve_inside
    from dsvl_adapt.errors import DataError

    folder = Path(directory) / split
    labels = folder / LABELS
    if not labels.is_file():
        raise DataError(f"{labels} not found: a PDF dataset needs <split>/{LABELS} beside the .pdf files "
                        "(see the finance plugin's README)")
    open_name, document = None, None  # keep the current PDF open while its questions follow one another
    try:
        for source, entry, error in iter_json_objects(labels):
            if entry is None:
                yield {"_source": source, "_error": error}
                continue
            unknown = set(entry) - {"file", "page", "question", "answer", "id", "meta"}
            if unknown:
                yield {"_source": source, "_error": f"unknown field(s) {sorted(unknown)} in {LABELS}; "
                                                    "use file, page, question, answer, id, meta"}
                continue
            name, page = entry.get("file"), entry.get("page", 1)
            if not isinstance(name, str) or not name:
                yield {"_source": source,
                       "_error": "'file' (the .pdf path relative to the split folder) is missing"}
                continue
            if not isinstance(page, int) or isinstance(page, bool):
                yield {"_source": source, "_error": f"'page' must be an integer (1-based), got {page!r}"}
                continue
            try:
                path = resolve_inside(folder, name, source)
                if name != open_name:
                    if document is not None:
                        document.close()
                    open_name, document = None, None
                    document = open_pdf(path)
                    open_name = name
                image = render_page(path, page, dpi=dpi, document=document)
            except DataError as exc:
                yield {"_source": source, "_error": str(exc)}
                continue
            meta = entry.get("meta") if entry.get("meta") is not None else {}
            if isinstance(meta, dict):
                meta = {**meta, "file": name, "page": page}
            line = source.rsplit(":", 1)[1]
            yield {"_source": source, "id": entry.get("id") or f"{split}/{name}#{page}/{line}", "image": image,
                   "question": entry.get("question"), "answer": entry.get("answer"), "meta": meta}
    finally:
        if document is not None:
            document.close()

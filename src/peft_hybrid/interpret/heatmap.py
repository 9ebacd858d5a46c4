"""Heatmaps of `AttributionResult` scores (input rows x generated columns) and their card section.

Figures are built with matplotlib's object-oriented API on the Agg canvas, so plotting never
switches the global pyplot backend of the caller (a notebook keeps its own).

Example:
    >>> from peft_hybrid import HybridConfig, HybridModel
    >>> from peft_hybrid.interpret.attribution import attribute
    >>> from peft_hybrid.offline import t5_from_preset
    >>> base, tokenizer = t5_from_preset("tiny")
    >>> model = HybridModel(base, HybridConfig(num_virtual_tokens=4), tokenizer=tokenizer)
    >>> result = attribute(model, tokenizer, "Amy: see you at 5?", max_new_tokens=3, progress=False)
    >>> from peft_hybrid.interpret.heatmap import add_heatmap_to_card, plot_heatmap, save_heatmaps
    >>> fig = plot_heatmap(result, aggregate_prompt=True)  # a matplotlib Figure
    >>> fig.savefig("heatmap.png")
    >>> [p.name for p in save_heatmaps(result, "heatmaps.png", aggregate_prompt=True)]
    ['heatmaps.png']
    >>> _ = model.save_pretrained("my-adapter")
    >>> card = add_heatmap_to_card("my-adapter", "heatmaps.png")
    >>> "Integrated Gradients attribution" in card.read_text(encoding="utf-8")
    True
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch

from peft_hybrid.interpret.attribution import AttributionResult, require_interpret

PROMPT_ROW = "soft prompt"
NORMALIZE = ("none", "column")
CARD_IMAGE = "attribution_heatmap.png"
_SECTION_START = "<!-- peft-hybrid:attribution -->"
_SECTION_END = "<!-- /peft-hybrid:attribution -->"
# Cells are annotated with their values only when the grid is small enough to stay legible.
_ANNOTATE_CELLS = 300


def heatmap_rows(result: AttributionResult, aggregate_prompt: bool = False) -> tuple[list[str], torch.Tensor]:
    """Row labels (readable) and the score matrix, with the prompt rows summed into one if asked.

    Summing keeps completeness: the aggregated row is the prompt's total contribution.
    """
    labels = [_readable(token) for token in result.input_tokens]
    scores = result.scores
    n = result.num_prompt_tokens
    if aggregate_prompt and n:
        labels = [PROMPT_ROW] + labels[n:]
        scores = torch.cat([scores[:n].sum(dim=0, keepdim=True), scores[n:]])
    return labels, scores


def num_pages(result: AttributionResult, max_rows: int | None, aggregate_prompt: bool = False) -> int:
    """How many figures `plot_heatmap` needs to show every row with at most ``max_rows`` per page."""
    rows = len(heatmap_rows(result, aggregate_prompt)[0])
    return 1 if max_rows is None else max(1, -(-rows // _check_max_rows(max_rows)))


def plot_heatmap(
    result: AttributionResult,
    *,
    aggregate_prompt: bool = False,
    max_rows: int | None = None,
    page: int = 0,
    normalize: str = "none",
    title: str | None = None,
    cmap: str = "RdBu_r",
    annotate: bool | None = None,
):
    """A heatmap ``Figure``: input tokens (rows) x generated tokens (columns), like the paper's.

    Args:
        result: from `peft_hybrid.interpret.attribution.attribute`.
        aggregate_prompt: one ``"soft prompt"`` row (the sum of ``P1..Pn``) instead of n rows.
        max_rows: page long inputs: at most this many rows per figure; ``page`` picks the
            figure (0-based, see `num_pages`). The colour scale is shared across pages.
        normalize: ``"none"`` (raw scores) or ``"column"`` (each column divided by its largest
            absolute score, to compare tokens whose log-probabilities move by different amounts).
        title: figure title; by default the input and output texts, shortened.
        cmap: a diverging colormap; the scale is symmetric so that 0 is its centre.
        annotate: write the values in the cells; ``None`` does it for small grids only.

    The module docstring shows it on a tiny model.
    """
    require_interpret("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    if normalize not in NORMALIZE:
        raise ValueError(f"normalize={normalize!r} is not valid; choose one of {', '.join(NORMALIZE)}.")
    labels, scores = heatmap_rows(result, aggregate_prompt)
    if normalize == "column":
        scores = scores / scores.abs().amax(dim=0, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)
    pages = num_pages(result, max_rows, aggregate_prompt)
    if not isinstance(page, int) or not 0 <= page < pages:
        raise ValueError(
            f"page={page!r} is out of range: this result has {pages} page(s) of max_rows={max_rows} rows (0-based)."
        )
    limit = float(scores.abs().max()) or 1.0
    start = 0 if max_rows is None else page * max_rows
    stop = len(labels) if max_rows is None else min(start + max_rows, len(labels))
    labels, values = labels[start:stop], scores[start:stop].numpy()
    columns = [_readable(token) for token in result.output_tokens]

    fig = Figure(
        figsize=(min(2.0 + 0.45 * len(columns), 30.0), min(1.8 + 0.24 * len(labels), 60.0)), layout="constrained"
    )
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(
        values,
        cmap=cmap,
        norm=TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit),
        aspect="auto",
        interpolation="nearest",
    )
    _label_axes(ax, columns, labels)
    n_prompt = (1 if aggregate_prompt else result.num_prompt_tokens) if result.num_prompt_tokens else 0
    if start < n_prompt < stop:  # a rule between the soft prompt and the text
        ax.axhline(n_prompt - start - 0.5, color="black", linewidth=0.8)
    if annotate or (annotate is None and values.size <= _ANNOTATE_CELLS):
        _annotate(ax, values, limit)
    bar = fig.colorbar(image, ax=ax, shrink=0.8)
    bar.set_label("attribution / column max" if normalize == "column" else "attribution to log p(token)")
    heading = title if title is not None else f"in: {_shorten(result.text)}\nout: {_shorten(result.output_text)}"
    if pages > 1:
        heading += f"  (rows {start + 1}-{stop} of {len(heatmap_rows(result, aggregate_prompt)[0])})"
    fig.suptitle(_escape(heading), fontsize=9)
    return fig


def _label_axes(ax: Any, columns: list[str], labels: list[str]) -> None:
    """Generated tokens along the top, input tokens down the side."""
    ax.set_xticks(
        range(len(columns)), [_escape(c) for c in columns], rotation=60, ha="left", rotation_mode="anchor", fontsize=8
    )
    ax.set_yticks(range(len(labels)), [_escape(r) for r in labels], fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(axis="x", labeltop=True, labelbottom=False)
    ax.xaxis.set_label_position("top")
    ax.set_xlabel("generated tokens")
    ax.set_ylabel("input tokens")


def _annotate(ax: Any, values: Any, limit: float) -> None:
    """Each cell's value, in white on the darkest cells so that it stays readable."""
    for (i, j), value in _cells(values):
        color = "white" if abs(value) > 0.6 * limit else "black"
        ax.text(j, i, f"{value:.2f}".replace("-0.00", "0.00"), ha="center", va="center", fontsize=6, color=color)


def save_heatmaps(
    result: AttributionResult, path: str | Path, *, max_rows: int | None = None, dpi: int = 150, **kwargs: Any
) -> list[Path]:
    """Save the heatmap PNG(s): ``path`` itself, then ``<stem>-2.png``, ... when ``max_rows`` pages it.

    Keyword arguments go to `plot_heatmap`. Returns the written paths.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: heatmaps are written as PNG; give a path ending in .png.")
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for page in range(num_pages(result, max_rows, kwargs.get("aggregate_prompt", False))):
        target = path if page == 0 else path.with_name(f"{path.stem}-{page + 1}{path.suffix}")
        plot_heatmap(result, max_rows=max_rows, page=page, **kwargs).savefig(target, dpi=dpi)
        written.append(target)
    return written


def add_heatmap_to_card(adapter_dir: str | Path, png_path: str | Path, *, caption: str | None = None) -> Path:
    """Put a heatmap into an adapter folder's model card: copies the PNG beside ``README.md`` and
    adds (or replaces) an "Integrated Gradients attribution" section that shows it.

    Running it again replaces the section rather than adding a second one. Returns the README path.
    Example: the last lines of the module docstring.
    """
    adapter_dir, png_path = Path(adapter_dir), Path(png_path)
    if not adapter_dir.is_dir():
        raise FileNotFoundError(
            f"adapter_dir={str(adapter_dir)!r} is not a folder; pass the folder written by save_pretrained."
        )
    if not png_path.is_file() or png_path.suffix.lower() != ".png":
        raise FileNotFoundError(f"png_path={str(png_path)!r} is not a PNG file; save one with save_heatmaps first.")
    image = adapter_dir / CARD_IMAGE
    if png_path.resolve() != image.resolve():
        shutil.copyfile(png_path, image)
    readme = adapter_dir / "README.md"
    card = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    section = "\n".join(
        [
            _SECTION_START,
            "## Integrated Gradients attribution",
            "",
            caption
            or "Attribution of each generated token's log-probability (columns) to the encoder input tokens "
            "(rows, soft prompt first), computed with Integrated Gradients; red raises the token's "
            "probability, blue lowers it.",
            "",
            f"![Integrated Gradients heatmap]({CARD_IMAGE})",
            _SECTION_END,
        ]
    )
    pattern = re.compile(re.escape(_SECTION_START) + ".*?" + re.escape(_SECTION_END), re.DOTALL)
    if pattern.search(card):
        card = pattern.sub(lambda _: section, card)
    else:
        card = card.rstrip("\n") + ("\n\n" if card.strip() else "") + section
    readme.write_text(card + ("" if card.endswith("\n") else "\n"), encoding="utf-8")
    return readme


def _readable(token: str) -> str:
    """SentencePiece's word-start mark shown as a leading space would vanish; drop it instead."""
    text = token.replace("\u2581", " ").strip()
    return text or token


def _escape(text: str) -> str:
    # A "$" would switch matplotlib into mathtext (SQL and prices contain them).
    return text.replace("$", r"\$")


def _shorten(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cells(values):
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            yield (i, j), float(values[i, j])


def _check_max_rows(max_rows: int) -> int:
    if not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows={max_rows!r} must be a positive integer or None.")
    return max_rows

"""What every page of the book reports besides its figures: the run facts and its tables.

* `run_info` tells the runner which models, data and sample a page used; the runner
  prints them in the banner at the top of the page (the output itself renders to nothing).
* `save_table` writes every table a page shows as CSV to
  ``<output folder>/_run/results/<chapter>/<notebook>[-<table>].csv``, at full precision,
  in long format with a ``method`` column where methods are compared (`long_table`).
  The same parameters and seed give the same result CSVs, byte for byte, on the same
  machine; measurements of time (speed tables, training seconds) differ from run to run,
  so `save_timings` writes them to ``_run/timings/`` instead.
* `show_table` shows a table rounded to a stated precision, with no truncated cells.
* `golden_errors` measures how far xaikit's attention methods are from the authors'
  reference code on the stored reference outputs (``tests/golden``).

`xaikit run` sets ``XAIKIT_RUN_DIR`` (the absolute ``<output folder>/_run``),
``XAIKIT_NOTEBOOK`` (``chapter/NN_name``) and ``XAIKIT_PROFILE`` for the kernel. A
notebook run by hand (papermill, Jupyter) writes under ``./_run`` instead, named after
the `chapter_notebook` argument, or ``notebook``.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Sequence

from .bookpages import BOOK_STATUS, DOES_NOT_HOLD, HOLDS, UNTESTABLE, VERDICTS, VERDICTS_SUFFIX, load_items  # noqa: F401  (re-exported)
from .errors import DataUnavailableError, InvalidParameterError

RUN_INFO_MIME = "application/vnd.xaikit.run-info+json"
_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
REPO = Path(__file__).resolve().parents[1]


def run_info(models: Sequence[str], data: str, sample: str) -> None:
    """Record which models, data and sample this page uses, for the runner's banner.

    Displays one output of mime type ``application/vnd.xaikit.run-info+json`` holding
    ``{"models": [...], "data": ..., "sample": ...}``; the book does not render it.
    Call it once per notebook, after the settings are known.
    """
    if isinstance(models, str) or not isinstance(models, (list, tuple)) or not models \
            or not all(isinstance(m, str) and m for m in models):
        raise InvalidParameterError(f"models must be a non-empty list of model names (str); got {models!r}")
    for name, value in (("data", data), ("sample", sample)):
        if not isinstance(value, str) or not value.strip():
            raise InvalidParameterError(f"{name} must be a non-empty str describing the page's {name}; got {value!r}")
    from IPython.display import display

    display({RUN_INFO_MIME: {"models": list(models), "data": data, "sample": sample}}, raw=True)


def run_dir() -> Path:
    """The run folder: ``$XAIKIT_RUN_DIR`` under `xaikit run`, else ``./_run``."""
    return Path(os.environ.get("XAIKIT_RUN_DIR") or "_run")


def results_dir() -> Path:
    """Where a page's tables and verdicts go: ``$XAIKIT_RESULTS_DIR``, else ``<run dir>/results``.

    `xaikit run` points it at a staging folder and moves what the notebook wrote into ``_run/results``
    only when the notebook ran to the end, so a failed re-run never mixes with, or deletes, the good results.
    """
    return Path(os.environ.get("XAIKIT_RESULTS_DIR") or run_dir() / "results")


def current_notebook(chapter_notebook: str | None = None) -> str:
    """``chapter/NN_name`` of the running notebook: the argument, ``$XAIKIT_NOTEBOOK``, else ``notebook``."""
    name = chapter_notebook or os.environ.get("XAIKIT_NOTEBOOK") or "notebook"
    parts = name.split("/")
    if not all(_NAME_PART.match(part) for part in parts) or len(parts) > 2:
        raise InvalidParameterError(
            f"notebook name {name!r} must be 'chapter/NN_name' (letters, digits, '_', '.', '-'), e.g. 'foundations/03_attention_maps'"
        )
    return name


#: folder of the run dir holding the tables of `save_table` (results) and of `save_timings` (timings)
RESULTS, TIMINGS = "results", "timings"


def table_path(table: str | None = None, *, chapter_notebook: str | None = None, folder: str = RESULTS) -> Path:
    """Where `save_table` (`folder` results) or `save_timings` (timings) writes table `table` of the running notebook."""
    if folder not in (RESULTS, TIMINGS):
        raise InvalidParameterError(f"folder must be {RESULTS!r} or {TIMINGS!r}; got {folder!r}")
    if table is not None and not _NAME_PART.match(table):
        raise InvalidParameterError(
            f"table name {table!r} must be a short file-name-safe word (letters, digits, '_', '.', '-'), e.g. 'ground-truth'"
        )
    chapter, _, notebook = current_notebook(chapter_notebook).rpartition("/")
    filename = f"{notebook}-{table}.csv" if table else f"{notebook}.csv"
    return (results_dir() if folder == RESULTS else run_dir() / TIMINGS) / chapter / filename


def save_table(df, table: str | None = None, *, chapter_notebook: str | None = None) -> Path:
    """Write the table `df` a page shows as CSV (full precision) and return the path.

    The path is ``<run dir>/results/<chapter>/<notebook>[-<table>].csv``; give every table
    of a page its own `table` name. A named or non-default index is written as columns.
    Where methods are compared, pass the long form (`long_table`): one row per method and
    quantity, with a ``method`` column. The file is replaced atomically, so a reader never
    sees half a table. A re-run with the same parameters must write the same bytes: pass
    measurements of time to `save_timings` instead.
    """
    return _write_table(df, table_path(table, chapter_notebook=chapter_notebook))


def save_timings(df, table: str | None = None, *, chapter_notebook: str | None = None) -> Path:
    """Write a table of time measurements (seconds, images per second) as `save_table` does, but to
    ``<run dir>/timings/<chapter>/<notebook>[-<table>].csv``: they change from run to run, and the
    result CSVs stay the same for the same parameters and seed."""
    return _write_table(df, table_path(table, chapter_notebook=chapter_notebook, folder=TIMINGS))


def _write_table(df, path: Path) -> Path:
    """`df` as CSV at `path` (index as columns unless it is the default one), replaced atomically."""
    import pandas as pd
    from pandas.io.formats.style import Styler

    if isinstance(df, Styler):
        df = df.data
    if isinstance(df, pd.Series):
        df = df.to_frame()
    if not isinstance(df, pd.DataFrame):
        raise InvalidParameterError(f"save_table and save_timings need a pandas DataFrame (or Series); got {type(df).__name__}")
    default_index = isinstance(df.index, pd.RangeIndex) and df.index.name is None and df.index.start == 0 and df.index.step == 1
    frame = df if default_index else df.reset_index()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", newline="") as stream:
            frame.to_csv(stream, index=False)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def long_table(df, id_column: str = "method", var_name: str = "quantity", value_name: str = "value"):
    """`df` with one row per `id_column` value (index or column) and one column per quantity, in long form."""
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise InvalidParameterError(f"long_table needs a pandas DataFrame; got {type(df).__name__}")
    frame = df.reset_index() if id_column in (df.index.names or []) else df
    if id_column not in frame.columns:
        raise InvalidParameterError(f"long_table: {id_column!r} is neither a column nor the index of the table ({list(frame.columns)})")
    return frame.melt(id_vars=id_column, var_name=var_name, value_name=value_name)


class CaptionedTable:
    """A table with a caption, as `show_table` returns it: numbered in the book ("Table 3.1"), plain in Jupyter.

    It shows itself twice over: as HTML (the Styler, caption on top) for Jupyter, and as a MyST ``{table}``
    block around the Markdown table for the book, whose configuration prefers Markdown outputs to HTML
    (``nb_mime_priority_overrides`` in _config.yml), so Sphinx numbers it per chapter like the ``{table}`` blocks
    of the pages' text. A table Markdown cannot hold (several column levels) stays HTML, unnumbered. Everything
    else is the Styler's: ``.to_html()``, ``.data``, and `xaikit.viz.glue_table` / ``table_markdown`` take it.
    """

    def __init__(self, styler, caption: str) -> None:
        self.styler = styler
        self.caption = " ".join(str(caption).split())

    def __getattr__(self, name: str):
        return getattr(self.styler, name)

    def _repr_html_(self) -> str:
        return self.styler.to_html()

    def _repr_markdown_(self) -> str | None:
        from .viz import table_markdown

        try:
            body = table_markdown(self.styler)
        except InvalidParameterError:  # several column levels: the HTML output stands alone
            return None
        return f"````{{table}} {self.caption}\n\n{body.rstrip()}\n````\n"


def show_table(df, precision: int, caption: str | None = None, *, scientific: bool = False):
    """`df` for display: numbers rounded to `precision` decimals, every cell whole, optional caption.

    Returns a pandas ``Styler`` (the last expression of a cell shows it); with a caption, a `CaptionedTable`
    around it, which the book numbers per chapter ("Table 3.1"). Integers stay integers; missing values show
    as an en dash. With `scientific`, floats are written as ``1.23e-06`` with `precision` decimals (for errors
    and other tiny numbers).
    """
    import pandas as pd

    if isinstance(df, pd.Series):
        df = df.to_frame()
    if not isinstance(df, pd.DataFrame):
        raise InvalidParameterError(f"show_table needs a pandas DataFrame (or Series); got {type(df).__name__}")
    if isinstance(precision, bool) or not isinstance(precision, int) or not 0 <= precision <= 12:
        raise InvalidParameterError(f"precision must be the number of decimals, an int in 0..12; got {precision!r}")
    for option, value in (("display.max_colwidth", None), ("display.max_columns", None), ("display.max_rows", None)):
        pd.set_option(option, value)
    if scientific:
        floats = [c for c in df.columns if pd.api.types.is_float_dtype(df[c])]
        styler = df.style.format(precision=precision, na_rep="–").format(f"{{:.{precision}e}}", subset=floats, na_rep="–")
    else:
        styler = df.style.format(precision=precision, na_rep="–")
    styler = styler.set_table_attributes('class="dataframe"')
    if caption:
        return CaptionedTable(styler.set_caption(caption), caption)
    return styler


def golden_dir_checked(golden_dir: Path | None = None) -> Path:
    """The folder of the reference outputs (default: the repository's ``tests/golden``), refused when it lacks them."""
    golden_dir = Path(golden_dir or REPO / "tests" / "golden")
    if not (golden_dir / "config.json").is_file():
        raise DataUnavailableError(
            f"no reference outputs in {golden_dir}: they ship with the xaikit repository (tests/golden); "
            "run the notebook from a git checkout or pass golden_dir"
        )
    return golden_dir


def golden_file(golden_dir: Path, name: str) -> dict:
    """The arrays of ``<golden_dir>/<name>.npz``."""
    import numpy as np

    with np.load(Path(golden_dir) / f"{name}.npz") as data:
        return dict(data)


def golden_model(golden_dir: Path, which: str, dtype=None):
    """Reference model `which` ("A" or "B") of the golden files, as a timm VisionTransformer in `dtype` (eval mode)."""
    import json
    from functools import partial

    import timm
    import torch
    from safetensors.torch import load_file
    from torch import nn

    c = json.loads((Path(golden_dir) / "config.json").read_text())[f"model{which}"]
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=c["img_size"], patch_size=c["patch_size"], embed_dim=c["embed_dim"], depth=c["depth"],
        num_heads=c["num_heads"], mlp_ratio=c["mlp_ratio"], qkv_bias=True, num_classes=c["num_classes"],
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    ).eval()
    vit.load_state_dict(load_file(str(Path(golden_dir) / f"model_{which}.safetensors")), strict=True)
    return vit.to(dtype or torch.float32)


def golden_errors(golden_dir: Path | None = None, precisions: Sequence[str] = ("float32", "float64")) -> "pd.DataFrame":  # noqa: F821
    """Relative errors of raw attention, rollout and GAE against the reference code's outputs.

    Reads the reference models and outputs in `golden_dir` (default: the repository's
    ``tests/golden``; see its README) and returns one row per comparison and precision
    (``"float32"``, ``"float64"``), with the error ``max |ours - reference| / max |reference|``: the figures
    ``tests/test_golden_equivalence.py`` checks against its tolerances.
    """
    from functools import partial

    import numpy as np
    import pandas as pd
    import torch

    from .methods import get_method

    golden_dir = golden_dir_checked(golden_dir)
    load = partial(golden_file, golden_dir)
    model = partial(golden_model, golden_dir)

    def error(ours: torch.Tensor, reference: np.ndarray) -> float:
        ours = ours.detach().cpu().numpy().reshape(reference.shape)
        return float(np.abs(ours - reference).max() / np.abs(reference).max())

    available = {"float32": (torch.float32, ""), "float64": (torch.float64, "_f64")}
    unknown = [p for p in precisions if p not in available]
    if unknown or not precisions:
        raise InvalidParameterError(f"precisions must be some of {', '.join(available)}; got {list(precisions)!r}")
    rows = []
    images_all = torch.from_numpy(load("inputs")["images"])
    for precision in precisions:
        dtype, suffix = available[precision]
        models = {which: model(which, dtype) for which in "AB"}
        images = images_all.to(dtype)
        chefer, cdam_a, cdam_b = load(f"chefer_A{suffix}"), load(f"cdam_A{suffix}"), load(f"cdam_B{suffix}")

        def run(which, method, targets=None, **params):
            return get_method(method).create(models[which], **params).attribute(images, targets)

        raw_a = run("A", "raw_attention")
        checks = [
            ("raw attention", "A", "Chefer et al. (raw_attn_last_layer)", raw_a, chefer["raw_attn_last_layer"]),
            ("raw attention", "A", "CDAM authors (attention_map_raw)", raw_a, cdam_a["attention_map_raw"]),
            ("raw attention", "B", "CDAM authors (attention_map_raw)", run("B", "raw_attention"), cdam_b["attention_map_raw"]),
            ("rollout", "A", "Chefer et al. (start layer 0)", run("A", "rollout"), chefer["rollout_start0"]),
            ("rollout", "A", "Chefer et al. (start layer 1)", run("A", "rollout", start_layer=1), chefer["rollout_start1"]),
        ]
        for which, reference, key, source in (("A", chefer, "gae", "Chefer et al."), ("B", cdam_b, "gae_raw", "CDAM authors")):
            for column in range(reference["targets"].shape[1]):
                targets = torch.from_numpy(reference["targets"][:, column])
                checks.append(("GAE", which, f"{source} (target set {column + 1})", run(which, "gae", targets), reference[key][:, column]))
        rows += [{"method": method, "precision": precision, "model": f"reference model {which}", "reference": source,
                  "relative error": error(ours, ref)} for method, which, source, ours, ref in checks]
    return pd.DataFrame(rows)


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``"1 thread"``, ``"2 threads"``: a count with its noun in the right number."""
    return f"{count} {noun if count == 1 else (plural_form or noun + 's')}"


# -- verdicts on the papers' claims ------------------------------------------------------------------------

# One per kernel: a verdict file written by an earlier run of the notebook is replaced, never merged into, so a
# verdict the re-run no longer records cannot survive it.
_KERNEL_RUN = uuid.uuid4().hex


def verdicts_path(chapter_notebook: str | None = None) -> Path:
    """Where `save_verdict` records the running notebook's verdicts: ``<run dir>/results/<chapter>/<notebook>-verdicts.json``."""
    chapter, _, notebook = current_notebook(chapter_notebook).rpartition("/")
    return results_dir() / chapter / f"{notebook}{VERDICTS_SUFFIX}"


def save_verdict(item: str, verdict: str, evidence: str, *, headline: str | None = None, reason: str | None = None,
                 chapter_notebook: str | None = None) -> Path:
    """Record the demo's verdict on one item of ``book/status.yml`` that this notebook reproduces; return the file.

    `verdict` is "holds", "does not hold" or "cannot be tested on the demo", derived by `xaikit.verdicts`
    (never typed); `evidence` the sentence with the deciding numbers and their uncertainty (or why the demo
    cannot test the claim); `headline` the short form of it a results-at-a-glance line prints (`Verdict.headline`);
    `reason` where the demo disagrees with the paper, the hypothesis the page tested and what it showed (built from
    the experiment's numbers), or that the reason is unknown. The file ``<run dir>/results/<chapter>/<notebook>-verdicts.json`` maps each item to
    ``{verdict, evidence, profile, recorded_at, run}``; later calls of the same kernel add to it, the first call
    of a new kernel (a re-run) starts it afresh. It is replaced atomically. The book's status tables read it
    (`xaikit.bookpages`). Refused: an item that is not this notebook's in ``book/status.yml``, an item
    without a claim, an unknown verdict, an empty evidence.
    """
    import json
    from datetime import datetime, timezone

    from .errors import DataIntegrityError
    from .fileio import atomic_write

    notebook = current_notebook(chapter_notebook)
    if verdict not in VERDICTS:
        raise InvalidParameterError(
            f"verdict {verdict!r} is not one of {', '.join(map(repr, VERDICTS))}: derive it with xaikit.verdicts "
            "(best_method_verdict, improvement_verdict, value_verdict, untestable) instead of typing it"
        )
    if not isinstance(evidence, str) or not evidence.strip():
        raise InvalidParameterError(
            f"evidence must be the sentence with the deciding numbers and their uncertainty (or why the claim cannot be "
            f"tested); got {evidence!r}"
        )
    for name, text in (("headline", headline), ("reason", reason)):
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise InvalidParameterError(f"{name} must be a non-empty sentence or None (left out); got {text!r}")
    items = {entry.item: entry for entry in load_items(BOOK_STATUS) if entry.notebook == notebook}
    if not items:
        raise InvalidParameterError(
            f"notebook {notebook!r} reproduces no item of {BOOK_STATUS}: run it with `xaikit run`, or pass "
            "chapter_notebook='chapter/NN_name' as status.yml names it"
        )
    if item not in items:
        raise InvalidParameterError(
            f"{item!r} is not an item of {notebook} in {BOOK_STATUS}; its items are {', '.join(map(repr, items))}: "
            "name one of them exactly"
        )
    if not items[item].claim:
        raise InvalidParameterError(f"item {item!r} of {notebook} has no claim in {BOOK_STATUS}: add its `claim:` first")
    path = verdicts_path(notebook)
    recorded = {}
    if path.is_file():
        try:
            recorded = json.loads(path.read_text())
            if not isinstance(recorded, dict):
                raise ValueError(f"it holds a {type(recorded).__name__}, not a mapping item -> verdict")
        except (OSError, ValueError) as err:
            raise DataIntegrityError(f"{path} is not a readable verdict file ({err}): delete it and re-run the notebook") from err
        recorded = {name: entry for name, entry in recorded.items() if isinstance(entry, dict) and entry.get("run") == _KERNEL_RUN}
    recorded[item] = {
        "verdict": verdict,
        "evidence": " ".join(evidence.split()),
        **{name: " ".join(text.split()) for name, text in (("headline", headline), ("reason", reason)) if text},
        "profile": os.environ.get("XAIKIT_PROFILE"),
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "run": _KERNEL_RUN,
    }
    with atomic_write(path, "w") as stream:
        stream.write(json.dumps(recorded, indent=2, ensure_ascii=False) + "\n")
    return path

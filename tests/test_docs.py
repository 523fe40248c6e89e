"""The docs stay true because they are run: every ``python`` and ``bash`` block of README.md and
docs/*.md is executed (with Sybil), unless a ``<!-- skip: next "reason" -->`` comment before it
says why it cannot be; a block in any other language (bar ``text``) or without one fails, and so
does a skip without a reason.  Every relative link resolves (files and #anchors), every
repository path or ``neumf_fast`` module named in backticks exists, and benchmarks/results/ holds
one run per suite and machine, each listed in its index.

Shell blocks run at a small size, in a fresh directory per page, with the user's commands as they
are written except for these rewrites (``small``): ``neumf-fast`` is this checkout's CLI
(``python -m neumf_fast.cli``), ``--dataset synthetic`` and ``data info synthetic`` read a
120-user synthetic CSV (the ids 42, 7, 1193 and 661 the examples use exist in it), and every
``neumf-fast train`` gets ``--epochs 1 --no-progress`` (argparse keeps the last value).  The flags
themselves are the real ones: a renamed or removed flag fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unittest
from pathlib import Path

import pytest

sybil = pytest.importorskip("sybil", reason="the docs tests need sybil (requirements-dev.txt)")
markdown_it = pytest.importorskip("markdown_it", reason="the link check needs markdown-it-py (requirements-dev.txt)")
pytest.importorskip("pandas", reason="the docs' CLI examples need the data pipeline (pandas)")

from sybil import Sybil  # noqa: E402
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser  # noqa: E402
from sybil.parsers.markdown.lexers import RawFencedCodeBlockLexer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RESULTS = ROOT / "benchmarks" / "results"
RUN = {"python", "bash", "sh", "console"}  # the languages whose blocks are executed
NOT_CODE = {"text"}  # trees, outputs: nothing to run
SMALL_TRAIN = "--epochs 1 --no-progress"


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ---- running the blocks ------------------------------------------------------------------------


def small(source: str, data: Path) -> str:
    """The shell block as the test runs it: continuation lines joined, the rewrites above."""
    lines = []
    for line in source.replace("\\\n", " ").splitlines():
        command, sep, comment = _split_comment(line)
        if re.match(r"\s*neumf-fast\s", command):
            command = re.sub(r"(--dataset\s+|data\s+info\s+)synthetic\b", rf"\g<1>{data}", command)
            if re.match(r"\s*neumf-fast\s+train\b", command) and "--help" not in command:
                command = f"{command.rstrip()} {SMALL_TRAIN}"
        lines.append(command + sep + comment)
    return "\n".join(lines) + "\n"


def _split_comment(line: str) -> tuple[str, str, str]:
    """``command``, ``' # '`` and the comment (the commands here hold no ``#`` of their own)."""
    match = re.search(r"\s+#\s", line)
    if match is None or line.lstrip().startswith("#"):
        return (line, "", "") if match is None else ("", "", line)
    return line[: match.start()], match.group(0), line[match.end():]


class ShellRunner:
    """Runs a page's shell blocks in its own directory, with this checkout's ``neumf-fast``."""

    def __init__(self, workdir: Path, data: Path):
        self.workdir, self.data = workdir, data
        bin_dir = workdir.parent / f"{workdir.name}-bin"
        bin_dir.mkdir(exist_ok=True)
        (bin_dir / "neumf-fast").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m neumf_fast.cli "$@"\n')
        (bin_dir / "neumf-fast").chmod(0o755)
        (bin_dir / "python").symlink_to(sys.executable)
        self.env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))

    def __call__(self, example) -> None:
        source = example.parsed
        if example.region.lexemes.get("arguments") == "console":  # `$ command` lines; the rest is output
            source = "\n".join(line[2:] for line in source.splitlines() if line.startswith("$ "))
        script = small(source, self.data)
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=self.workdir, env=self.env,
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise AssertionError(f"{_id(Path(example.path))}:{example.line}: exit {done.returncode} running\n{script}\n"
                                 f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    from neumf_fast.data import synthetic

    data = synthetic(0, num_users=120, num_items=2000, num_interactions=6000)
    path = tmp_path_factory.mktemp("data") / "events.csv"
    rows = [f"{u},{i},{t}" for u, i, t in zip(data.user_ids[data.user], data.item_ids[data.item], data.timestamp)]
    path.write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    return path


def parse(path: Path, shell: ShellRunner | None = None):
    shell = shell or (lambda example: None)
    parsers = [PythonCodeBlockParser(), SkipParser(),
               *(CodeBlockParser(language=lang, evaluator=shell) for lang in ("bash", "sh", "console"))]
    return Sybil(parsers=parsers).parse(path)


@pytest.mark.parametrize("page", DOCS, ids=_id)
def test_every_block_runs(page, small_data, tmp_path, monkeypatch):
    """The page's blocks in order, in one namespace and one directory, as a reader would run them."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # the Python blocks read the runs that the shell blocks wrote
    monkeypatch.setenv("MPLBACKEND", "Agg")
    document = parse(page, ShellRunner(workdir, small_data))
    ran, skipped = 0, []
    for example in document:
        try:
            example.evaluate()
        except unittest.SkipTest as reason:
            skipped.append(f"line {example.line}: {reason}")
            continue
        ran += isinstance(example.parsed, str) or example.region.lexemes.get("arguments") is not None
    print(f"{_id(page)}: {ran} examples ran; skipped, with their reasons: {skipped}")


# ---- every block is run or marked --------------------------------------------------------------


def fenced_blocks(path: Path):
    """Every fenced block of a page, with the language its info string names ('' for none)."""
    lexer = RawFencedCodeBlockLexer(info_pattern=re.compile(r"(?P<info>[^\n]*)\n", re.MULTILINE))
    document = sybil.Document(path.read_text(), str(path))
    for region in lexer(document):
        info = region.lexemes["info"].strip()
        yield document.text.count("\n", 0, region.start) + 1, (info.split() or [""])[0]


@pytest.mark.parametrize("page", DOCS, ids=_id)
def test_every_block_is_run_or_marked(page):
    unknown = [f"{_id(page)}:{line}: ```{lang}" for line, lang in fenced_blocks(page) if lang not in RUN | NOT_CODE]
    assert not unknown, ("blocks that nothing runs: name their language (python or bash, which run; text for "
                         f"output or trees) or fix it: {unknown}")
    text = page.read_text()
    for match in re.finditer(r"<!--\s*skip:[^>]*-->", text):
        assert re.fullmatch(r'<!-- skip: next "[^"]{8,}" -->', match.group(0)), (
            f'{_id(page)}:{text.count(chr(10), 0, match.start()) + 1}: a skip must say why, as '
            f'<!-- skip: next "needs a GPU" -->, not {match.group(0)}')


SKIP = re.compile(r'<!-- skip: next "(?P<reason>[^"]+)" -->\n(?P<next>[^\n]*)')


def marked_blocks():
    for page in DOCS:
        text = page.read_text()
        for match in SKIP.finditer(text):
            yield pytest.param(page, match, id=f"{_id(page)}:{text.count(chr(10), 0, match.start()) + 2}")


@pytest.mark.parametrize(("page", "match"), list(marked_blocks()))
def test_a_marked_block_is_reported_with_its_reason(page, match):
    """Each block that is not run shows up as a skip with its reason (``pytest -rs``), and the
    mark sits right above the block it is about."""
    language = match.group("next").removeprefix("```")
    assert match.group("next").startswith("```") and language in RUN, (
        f"{_id(page)}: a skip mark must stand right above a python or bash block, not {match.group('next')!r}")
    line = page.read_text().count("\n", 0, match.start()) + 2
    pytest.skip(f"{_id(page)}:{line} not run: {match.group('reason')}")


def test_the_block_check_sees_an_unmarked_block(tmp_path):
    """The check above is not vacuous: an unknown language fails it, and an unmarked shell block
    is run (so a command that cannot run here fails)."""
    page = tmp_path / "page.md"
    page.write_text("```shell\nneumf-fast train\n```\n\n```bash\nexit 3\n```\n")
    assert [lang for _, lang in fenced_blocks(page)] == ["shell", "bash"]
    ran = []
    for example in parse(page, lambda example: ran.append(example.parsed)):
        example.evaluate()
    assert ran == ["exit 3\n"]


def test_small_rewrites_only_the_size():
    data = Path("/d/events.csv")
    assert small("neumf-fast train --model neumf --dataset synthetic --out runs/neumf   # paper\n", data) == (
        f"neumf-fast train --model neumf --dataset {data} --out runs/neumf {SMALL_TRAIN}   # paper\n")
    assert small("neumf-fast data info synthetic\nneumf-fast train --help\n", data) == (
        f"neumf-fast data info {data}\nneumf-fast train --help\n")
    assert small("torchrun -m x \\\n    --epochs 3\n", data) == "torchrun -m x      --epochs 3\n"


# ---- links -------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    tokens = markdown_it.MarkdownIt().parse(path.read_text())
    seen: dict[str, int] = {}
    found = set()
    for opening, inline in zip(tokens, tokens[1:]):
        if opening.type == "heading_open":
            base = slug(inline.content)
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path):
    for token in markdown_it.MarkdownIt().parse(path.read_text()):
        for child in token.children or []:
            target = child.attrs.get("href") if child.type == "link_open" else child.attrs.get("src")
            if child.type in ("link_open", "image") and target:
                yield target


@pytest.mark.parametrize("page", DOCS, ids=_id)
def test_every_relative_link_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto: ...
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target} (no {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.relative_to(ROOT)})")
    assert not broken, f"{_id(page)}: broken links: {broken}"


def test_the_link_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A `title`: here\n\n[ok](#a-title-here) [bad](#nowhere) [file](missing.md) `[code](x.md)`\n")
    assert anchors(page) == {"a-title-here"}
    assert list(links(page)) == ["#a-title-here", "#nowhere", "missing.md"]


# ---- paths and modules named in backticks -----------------------------------------------------

# A token that names a file by pattern or placeholder (`gpu-<date>.md`, `csrc/cuda/*.cu`) is not a path.
PLACEHOLDER = re.compile(r"[*<>{}$\[\]|]")
MODULE = re.compile(r"(?<![\w.])neumf_fast(?:\.\w+)+")  # not torch.ops.neumf_fast.fused_input, the op


def top_level() -> set[str]:
    """The repository's own top-level files and folders (git's, so that runs/ or .venv/ is not one)."""
    done = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:  # not a git checkout (an sdist): what is there
        return {p.name for p in ROOT.iterdir() if not p.name.startswith(".") and p.name not in ("build", "runs")}
    return {line.split("/")[0] for line in done.stdout.splitlines()}


def code_spans(path: Path):
    """The text of every inline `code` span of a page (fenced blocks are run instead)."""
    for token in markdown_it.MarkdownIt().parse(path.read_text()):
        for child in token.children or []:
            if child.type == "code_inline":
                yield child.content


def module_exists(dotted: str) -> bool:
    """``neumf_fast.a.b``: a module, or an attribute of one (``neumf_fast.ops.neumf_input``)."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def missing_names(path: Path, root: Path = ROOT, tops: set[str] | None = None) -> list[str]:
    """The repository paths (``neumf_fast/ops/dispatch.py``, ``setup.py``) and modules
    (``neumf_fast.ops._library``) that the page's code spans name but that do not exist."""
    tops = top_level() if tops is None else tops
    missing = []
    for span in code_spans(path):
        for token in span.split():
            token = re.sub(r":\d+$", "", token.strip("\"'`,;()"))  # a line number
            file, _, name = token.partition("::")  # file.py::name: a class, function or test in it
            if file.split("/")[0] not in tops or PLACEHOLDER.search(token):
                continue
            if not (root / file).is_file() and not (root / file).is_dir():
                missing.append(token)
            elif name and (root / file).is_file() and not re.search(rf"^\s*(def|class)\s+{re.escape(name.split('.')[0])}\b",
                                        (root / file).read_text(), re.MULTILINE):
                missing.append(token)
        missing += [m for m in MODULE.findall(span) if not module_exists(m)]
    return missing


@pytest.mark.parametrize("page", DOCS, ids=_id)
def test_every_named_path_and_module_exists(page):
    missing = missing_names(page)
    assert not missing, f"{_id(page)} names, in backticks, paths or modules that do not exist: {missing}"


def test_the_name_check_sees_a_made_up_path_and_module(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("Real: `neumf_fast/ops/dispatch.py`, `bash benchmarks/gpu_check.sh DIR`, "
                    "`neumf_fast.ops._library`, `tests/test_docs.py::test_small_rewrites_only_the_size`, "
                    "`neumf_fast/models.py::NeuMF.forward`, `gpu-<date>.md`, `runs/neumf`, "
                    "`torch.ops.neumf_fast.no_such_op`.\n"
                    "Made up: `neumf_fast/ops/nowhere.py`, `python benchmarks/no_such_tool.py`, "
                    "`neumf_fast/models.py::NoSuchModel`, `neumf_fast.ops._nowhere`, "
                    "`neumf_fast.models.NoSuchModel`.\n")
    assert missing_names(page, tops={"neumf_fast", "benchmarks", "tests"}) == [
        "neumf_fast/ops/nowhere.py", "benchmarks/no_such_tool.py", "neumf_fast/models.py::NoSuchModel",
        "neumf_fast.ops._nowhere", "neumf_fast.models.NoSuchModel"]


# ---- results that back claims ------------------------------------------------------------------


def index_rows() -> list[tuple[str, str, list[str]]]:
    """(suite, machine, [files it links]) per row of benchmarks/results/README.md's table."""
    rows = []
    for line in (RESULTS / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 6 and cells[0] not in ("file", "---"):
            files = re.findall(r"\]\(([^)#]+)\)", cells[0])
            rows.append((cells[1], cells[3], files))
    return rows


def test_the_results_hold_one_run_per_suite_and_machine_each_indexed():
    rows = index_rows()
    assert rows, "benchmarks/results/README.md has no index table"
    keys = [(suite, machine) for suite, machine, _ in rows]
    assert len(keys) == len(set(keys)), f"two runs of one suite and machine: {sorted(keys)}"
    linked = {f.rstrip("/") for _, _, files in rows for f in files}
    for f in linked:
        assert (RESULTS / f).exists(), f"the index links {f}, which is not in benchmarks/results/"
    present = {p.name for p in RESULTS.iterdir() if p.name != "README.md"}
    assert present <= linked, f"results not in the index (a new run? remove the old one and index it): {present - linked}"


def test_the_front_page_picture_is_drawn_from_the_committed_results(tmp_path, monkeypatch, capsys):
    """The script, run as its command, writes a PNG of the figure's size (11 x 3.6 in at 110
    dpi) with both panels' bars drawn, and each bar is a number of the result files the figure
    and the README's caption name."""
    import json
    import runpy

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image
    import matplotlib.pyplot as plt

    script = ROOT / "benchmarks" / "plot_front_page.py"
    out = tmp_path / "throughput.png"
    monkeypatch.setattr(sys, "argv", [str(script), "--out", str(out)])
    plot = runpy.run_path(str(script), run_name="__main__")
    fig = plt.gcf()
    try:
        named = re.findall(r"from (\S+\.json) and (\S+\.json)", capsys.readouterr().out)[0]
        ax_cpu, ax_gpu = fig.axes
        heights = lambda ax: [round(bar.get_height(), 6) for bar in ax.patches]
        cpu, gpu = (json.loads((RESULTS / name).read_text()) for name in named)
        plain, fast = zip(*[(p, f) for _, p, f in plot["cpu_bars"](cpu)])
        assert heights(ax_cpu) == [round(v / 1e6, 6) for v in plain + fast]
        rows = [r for _, r in plot["gpu_bars"](gpu)]
        assert heights(ax_gpu) == [round(r[k] / 1e6, 6) for k in ("eager", "eager_graphs", "fused_graphs") for r in rows]
        assert min(heights(ax_cpu) + heights(ax_gpu)) > 0
        assert f"from benchmarks/results/{named[0]} and {named[1]}" in [t.get_text() for t in fig.texts]
    finally:
        plt.close(fig)
    for name in named:
        assert name in (ROOT / "README.md").read_text(), f"the README's caption does not name {name}"
    image = matplotlib.image.imread(out)
    assert image.shape == (396, 1210, 4), image.shape
    red = (abs(image[..., :3] - [0xd6 / 255, 0x27 / 255, 0x28 / 255]).max(axis=-1) < 0.02).mean()
    grey = (abs(image[..., :3] - 0x99 / 255).max(axis=-1) < 0.02).mean()
    assert red > 0.01 and grey > 0.01, f"the bars cover {red:.2%} (neumf_fast) and {grey:.2%} (PyTorch) of the image"

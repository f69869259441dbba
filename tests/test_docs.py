"""The documentation stands alone: no file points outside the repository, every relative
link in the READMEs and docs/ resolves (anchors included), and the documented manifest
fields and pipeline stages are the ones the code writes."""

from __future__ import annotations

import importlib
import re
import subprocess
import unicodedata
from pathlib import Path

import pytest

from manifest_docs import documented_patterns, undocumented

ROOT = Path(__file__).resolve().parents[1]
# Documents that exist only outside this repository; assembled so this file does not
# match itself.
OUTSIDE = [name + ".md" for name in ("DESIGN", "TOOLCHAIN" + "-NOTES", "MOBILE" + "-NOTES")]
OUTSIDE += ["../" + "shared"]
LINKED_DOCS = ["README.md", "benchmarks/README.md", "android_demo/README.md",
               "ios_demo/README.md", *sorted(str(p.relative_to(ROOT))
                                            for p in (ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode()
        files = [ROOT / p for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):       # not a git checkout
        skip = {".git", "__pycache__", ".tools", "build", ".venv"}
        files = [p for p in ROOT.rglob("*")
                 if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]
    return [p for p in files if p.is_file()]


def test_no_file_refers_to_a_document_outside_the_repository():
    assert len(tracked_files()) > 100
    found = []
    for path in tracked_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue                                   # binary (weights, images)
        for i, line in enumerate(text.splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{i}: {name}" for name in OUTSIDE if name in line]
    assert not found, "references to documents outside the repository:\n" + "\n".join(found)


def slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = re.match(r"#{1,6} (.+)", line)
        if m and not in_code:
            s = slug(m.group(1))
            out.add(f"{s}-{seen[s]}" if s in seen else s)
            seen[s] = seen.get(s, 0) + 1
    return out


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)   # code blocks hold no links
    return [a or b for a, b in _LINK.findall(text)
            if not re.match(r"[a-z][a-z+.-]*:", a or b)]            # http:, mailto: ...


@pytest.mark.parametrize("doc", LINKED_DOCS)
def test_relative_links_resolve(doc):
    path = ROOT / doc
    links = relative_links(path)
    broken = []
    for link in links:
        target, _, anchor = link.partition("#")
        dest = (path.parent / target).resolve() if target else path
        if not dest.exists() or ROOT not in dest.parents and dest != ROOT:
            broken.append(f"{link} (no such file in the repository)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{link} (no heading #{anchor} in {dest.relative_to(ROOT)})")
    assert not broken, f"{doc}: broken links: {broken}"


def test_link_checker_sees_links_and_anchors():
    """Not vacuous: the docs index links every docs page, and a wrong anchor is caught."""
    index = relative_links(ROOT / "docs" / "README.md")
    for page in ("ffba.md", "pipeline.md", "manifest.md", "metrics.md", "toolchain.md"):
        assert page in index
    assert "padding-to-the-quantization-group" in anchors(ROOT / "docs" / "ffba.md")
    assert slug("FFBA vs LoRA latency (`tpot.py`)") == "ffba-vs-lora-latency-tpotpy"
    assert slug("Export cost per stage (`export_cost.py`)") == "export-cost-per-stage-export_costpy"


def test_every_pipeline_stage_is_documented():
    from flora_export.export.pipeline import COMMON_STAGES

    stages = list(COMMON_STAGES) + ["write"]
    for backend in ("executorch", "onnx", "coreml"):
        stages += importlib.import_module(f"flora_export.export.{backend}").STAGES
    table = (ROOT / "docs" / "pipeline.md").read_text()
    rows = set(re.findall(r"^\| `([a-z-]+)` \|", table, re.M))
    assert set(stages) <= rows, f"stages missing from docs/pipeline.md: {set(stages) - rows}"


def test_every_target_is_documented():
    from flora_export.export.targets import TARGETS

    text = (ROOT / "docs" / "pipeline.md").read_text()
    for name, row in TARGETS.items():
        line = next((ln for ln in text.splitlines() if ln.startswith(f"| `{name}` |")), None)
        assert line, f"target {name} missing from docs/pipeline.md"
        assert all(f"`{b}`" in line for b in row.backends), line


def test_manifest_doc_check_catches_an_undocumented_field():
    patterns = documented_patterns()
    assert len(patterns) > 100
    manifest = {"target": "android", "counts": {"delegates": 3, "new_count": 1},
                "results": {"onnx": {"parity": {"sqnr_db": 20.0, "new_figure": 1.0}}},
                "files": {"model.pte": {"bytes": 1, "sha256": "0" * 64}},
                "model": {"config": {"rope_scaling": {"factor": 32.0}}}}
    assert undocumented(manifest, patterns) == ["counts.new_count",
                                                "results.onnx.parity.new_figure"]


def test_results_files_the_readmes_name_exist():
    """Figures cite their results file as results/NAME or benchmarks/results/NAME."""
    named = set()
    for doc in ("README.md", "benchmarks/README.md"):
        named |= set(re.findall(r"results/([\w.-]+?\.(?:json|md|png|log))\b",
                                (ROOT / doc).read_text()))
    assert {"tpot-llama3.2-1b-executorch.json", "export_cost-default.json",
            "export_cost.json"} <= named
    missing = sorted(n for n in named if not (ROOT / "benchmarks" / "results" / n).exists())
    assert not missing, f"results files named in the READMEs but not committed: {missing}"

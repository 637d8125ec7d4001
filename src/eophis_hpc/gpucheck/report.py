"""The results of ``eophis-hpc gpu-check`` and the two files it writes: ``gpu-check.md`` for a
person, ``gpu-check.json`` for a script. A check passes, fails or is skipped with the reason;
the command fails when any check failed."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATUSES = ("pass", "fail", "skip")


@dataclass
class Result:
    """One check: its section, name, status, what it found and any figures."""

    section: str
    name: str
    status: str
    detail: str = ""
    figures: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"Result.status must be one of {STATUSES}, got {self.status!r}")


@dataclass
class Report:
    """Everything one run found: the environment and the results, in order."""

    environment: dict = field(default_factory=dict)
    results: list = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def add(self, result: Result) -> Result:
        self.results.append(result)
        return result

    def skip_section(self, section: str, why: str) -> None:
        self.add(Result(section, section, "skip", why))

    def counts(self) -> dict:
        return {s: sum(r.status == s for r in self.results) for s in STATUSES}

    @property
    def failed(self) -> bool:
        return any(r.status == "fail" for r in self.results)

    def to_dict(self) -> dict:
        return {"environment": self.environment, "counts": self.counts(),
                "seconds": round(time.time() - self.started, 1),
                "results": [asdict(r) for r in self.results]}

    def markdown(self) -> str:
        env = self.environment
        lines = ["# eophis-hpc gpu-check", ""]
        c = self.counts()
        verdict = "FAILED" if self.failed else ("no GPU: nothing was checked"
                                                 if not env.get("gpu_frameworks") else "passed")
        lines += [f"**{verdict}**: {c['pass']} passed, {c['fail']} failed, {c['skip']} skipped "
                  f"in {time.time() - self.started:.0f} s", "", "## Environment", ""]
        for key, value in env.items():
            if isinstance(value, dict):
                lines.append(f"- {key}:")
                lines += [f"  - {k}: {v}" for k, v in value.items()]
            else:
                lines.append(f"- {key}: {value}")
        section = None
        for r in self.results:
            if r.section != section:
                section = r.section
                lines += ["", f"## {section}", "", "| check | status | detail |", "|---|---|---|"]
            detail = r.detail.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {r.name} | {r.status.upper()} | {detail} |")
        return "\n".join(lines) + "\n"

    def write(self, out) -> tuple[Path, Path]:
        """Write ``gpu-check.md`` and ``gpu-check.json`` into folder ``out`` (made if needed)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        md, js = out / "gpu-check.md", out / "gpu-check.json"
        md.write_text(self.markdown())
        js.write_text(json.dumps(self.to_dict(), indent=1, default=str) + "\n")
        return md, js

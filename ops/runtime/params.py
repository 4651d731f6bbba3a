"""One way to read and check a job's parameters.

A job declares its parameters with `@job(..., params={...})`; the runner reads the
run's raw parameters (from beat kwargs, a follow-up chunk, a test) through the
declaration before the body runs, so a body sees only checked values of the right
type in `ctx.params`, and a bad or unknown parameter fails the run with one line.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from ops.runtime.errors import JobError

# Parameters the runtime itself sets: the local day of `--date`, and the follow-up chunk's number.
RESERVED = ("date", "chunk")


@dataclass(frozen=True)
class Param:
    kind: type
    default: object = None
    low: float | None = None
    high: float | None = None
    choices: tuple = ()

    def read(self, name: str, raw: object) -> object:
        if raw is None:
            return self.default
        if self.kind is bool:
            if not isinstance(raw, bool):
                raise JobError(f"{name} must be true or false, not {raw!r}")
            return raw
        if self.kind is date:
            return _date(name, raw)
        if self.kind is str:
            if not self.choices:
                if not isinstance(raw, str):
                    raise JobError(f"{name} must be text, not {raw!r}")
                return raw
            if raw not in self.choices:
                raise JobError(f"{name} must be one of {', '.join(map(str, self.choices))}, not {raw!r}")
            return raw
        return self._number(name, raw)

    def _number(self, name: str, raw: object):
        integral = self.kind is int
        if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
            raw = int(raw)  # a value typed as text (the admin's kwargs, a command line)
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or (integral and not isinstance(raw, int)):
            raise JobError(f"{name} must be {'an integer' if integral else 'a number'}, not {raw!r}")
        if (self.low is not None and raw < self.low) or (self.high is not None and raw > self.high):
            if self.high is None:
                bounds = f"at least {self.low:g}"
            elif self.low is None:
                bounds = f"at most {self.high:g}"
            else:
                bounds = f"between {self.low:g} and {self.high:g}"
            raise JobError(f"{name} must be {bounds}, not {raw}")
        return self.kind(raw)


def integer(default: int | None = None, *, low: int | None = None, high: int | None = None) -> Param:
    return Param(int, default, low, high)


def number(default: float | None = None, *, low: float | None = None, high: float | None = None) -> Param:
    return Param(float, default, low, high)


def choice(default: str, choices: tuple[str, ...]) -> Param:
    return Param(str, default, choices=tuple(choices))


def text(default: str | None = None) -> Param:
    return Param(str, default)


def flag(default: bool | None = None) -> Param:
    return Param(bool, default)


def day() -> Param:
    return Param(date)


def _date(name: str, raw: object) -> date:
    if isinstance(raw, date):
        return raw
    try:
        return date.fromisoformat(str(raw))
    except ValueError:
        raise JobError(f"{name} must be a date as YYYY-MM-DD, not {raw!r}") from None


def read_params(job_name: str, declared: dict[str, Param], raw: dict) -> dict:
    """The declared parameters' checked values (defaults for those not given); JobError on anything else."""
    unknown = sorted(set(raw) - set(declared) - set(RESERVED))
    if unknown:
        known = ", ".join(sorted(declared)) or "none"
        raise JobError(f"unknown parameter(s) for {job_name}: {', '.join(unknown)} (it takes: {known})")
    return {name: param.read(name, raw.get(name)) for name, param in declared.items()}

"""The run configuration: built once by the CLI (flag > environment > default), validated
before anything is written, then handed to every stage. No stage re-derives a setting.

Environment variables (each also a flag; the flag wins):

    REVENUE_INPUT               --input
    REVENUE_DATA_DIR            --data-dir
    REVENUE_AS_OF               --as-of
    REVENUE_REPORTING_CURRENCY  --reporting-currency
    REVENUE_FX_RATES            --fx-rates
    REVENUE_PII_KEY             key for email hashes (unset: emails are not stored)
    REVENUE_LAKE_URI            --lake (ingest, metrics, maintain): s3://bucket/prefix or a folder
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path

from pipelines.layout import DataLayout
from pipelines.store import check_lake_uri
from transforms.errors import ConfigError, FxError, InputError, UnknownCurrency
from transforms.fx import FxTable, load_fx
from transforms.money import currency_exponent, minor_unit
from transforms.redact import PiiPolicy, redact_path
from transforms.schemas import FIRST_SUPPORTED_DAY, LAST_SUPPORTED_DAY

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INPUT = REPO_ROOT / "data" / "sample" / "events"
DEFAULT_DATA_DIR = Path("data")
DEFAULT_REPORTING_CURRENCY = "USD"
PII_KEY_ENV = "REVENUE_PII_KEY"
REDACTION_KEY_BYTES = 32


@dataclass(frozen=True)
class GateThresholds:
    """Dead-letter ratios (dead letters / lines accepted or dead-lettered): counts, not money.

    The ratio is judged over the lines new since the published warehouse when there are at least
    ``dead_letter_min_lines`` of them, else over the whole lake when it has that many, else not at
    all (too few lines for a ratio to mean anything): one bad message in a micro-batch of ten does
    not block publishing (pipelines.quality.dead_letter_window)."""

    dead_letter_ratio_warning: float = 0.01
    dead_letter_ratio_critical: float = 0.05
    dead_letter_min_lines: int = 100

    def as_parameters(self) -> dict[str, float]:
        return {"dead_letter_ratio_warning": self.dead_letter_ratio_warning,
                "dead_letter_ratio_critical": self.dead_letter_ratio_critical,
                "dead_letter_min_lines": self.dead_letter_min_lines}  # fmt: skip


@dataclass(frozen=True)
class Materiality:
    """When a restatement of a closed month is large enough to flag (CONTRACT section 7): its
    difference is at least ``amount`` (reporting currency, money metrics only) or at least
    ``fraction`` of the reported value (any difference from a reported 0 counts)."""

    amount: Decimal = Decimal("1000")
    fraction: Decimal = Decimal("0.01")

    def is_material(self, metric: str, reported: Decimal, restated: Decimal) -> bool:
        difference = abs(restated - reported)
        if difference == 0:
            return False
        if metric != "active_customers" and difference >= self.amount:
            return True
        return reported == 0 or difference / abs(reported) >= self.fraction

    def describe(self) -> dict[str, str]:
        return {"amount": str(self.amount), "fraction": str(self.fraction)}


@dataclass(frozen=True)
class RunConfig:
    layout: DataLayout
    reporting_currency: str = DEFAULT_REPORTING_CURRENCY
    fx: FxTable | None = field(default=None, repr=False)
    fx_source: str = "bundled"
    input_dir: Path | None = None
    as_of: dt.date | None = None  # None: the UTC date of the latest event in the lake (resolve_as_of)
    beam_args: tuple[str, ...] = ()
    pii_key: bytes | None = field(default=None, repr=False)
    thresholds: GateThresholds = GateThresholds()
    shards: int | None = None
    pii: PiiPolicy | None = field(default=None, repr=False)  # set by with_pii(), once a run starts writing
    full_refresh: bool = False  # rebuild every derived table (lake and warehouse) from the lake's events
    metrics_workers: int = 1  # worker processes of a full metrics rebuild (pipelines.metrics._workers)
    materiality: Materiality = Materiality()  # flags large restatements of closed months

    @property
    def reporting_exponent(self) -> int:
        return currency_exponent(self.reporting_currency)

    @property
    def reporting_minor_unit(self):
        return minor_unit(self.reporting_currency)

    def with_as_of(self, as_of: dt.date) -> RunConfig:
        return replace(self, as_of=check_as_of(as_of))

    def resolve_as_of(self) -> RunConfig:
        """This config with ``as_of`` set: the flag's value, or the latest event day in the lake."""
        if self.as_of is not None:
            return self
        from pipelines import lake

        latest = lake.latest_event_day(self.layout)
        if latest is None:
            raise InputError(f"the lake under {self.layout.lake} has no events: run `revenue ingest` first")
        return self.with_as_of(latest)

    def with_pii(self) -> RunConfig:
        """This config with its redaction policy (creating the data dir's secret on first use)."""
        if self.pii is not None:
            return self
        return replace(self, pii=load_pii_policy(self.layout, self.pii_key))

    def redact_path(self, path: Path | str) -> str:
        return redact_path(str(path), self.pii.redaction_key if self.pii else None)

    def describe(self) -> dict:
        """What a manifest records about the configuration (never a key; paths redacted)."""
        return {
            "input": self.redact_path(self.input_dir.absolute()) if self.input_dir else None,
            "data_dir": self.redact_path(self.layout.root),
            "as_of": self.as_of.isoformat() if self.as_of else None,
            "reporting_currency": self.reporting_currency,
            "fx_rates": self.fx_source,
            "beam_args": list(self.beam_args),
            "pii_key_set": self.pii_key is not None,
            "gate_thresholds": self.thresholds.as_parameters(),
            "full_refresh": self.full_refresh,
            "metrics_workers": self.metrics_workers,
            "materiality": self.materiality.describe(),
        }


def check_as_of(as_of: dt.date) -> dt.date:
    if not FIRST_SUPPORTED_DAY <= as_of <= LAST_SUPPORTED_DAY:
        raise ConfigError(f"--as-of {as_of} is outside the supported range {FIRST_SUPPORTED_DAY}..{LAST_SUPPORTED_DAY}")
    return as_of


def check_materiality(amount, fraction) -> Materiality:
    """``--materiality AMOUNT FRACTION``: exact decimals, amount >= 0, 0 <= fraction <= 1."""
    try:
        amount, fraction = Decimal(str(amount)), Decimal(str(fraction))
    except ArithmeticError:
        raise ConfigError(f"--materiality: {amount!r} {fraction!r} are not numbers (e.g. 1000 0.01)") from None
    if not (amount.is_finite() and fraction.is_finite()) or amount < 0 or not 0 <= fraction <= 1:
        raise ConfigError(f"--materiality: amount must be >= 0 and fraction within 0..1, got {amount} {fraction}")
    return Materiality(amount, fraction)


def load_pii_policy(layout: DataLayout, pii_key: bytes | None) -> PiiPolicy:
    """Card numbers and emails become keyed tokens under ``REVENUE_PII_KEY`` or, when it is unset,
    under a random secret kept in the data dir (created once, owner-only), so a token means the
    same value in every run on that data dir and cannot be reversed without the key.
    Email fields are kept (as keyed hashes) only under ``REVENUE_PII_KEY``."""
    if pii_key:
        return PiiPolicy(redaction_key=pii_key, email_key=pii_key)
    path = layout.redaction_key_file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another run created it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(REDACTION_KEY_BYTES))
                handle.flush()
                os.fsync(handle.fileno())
    key = path.read_text().strip()
    if len(key) != 2 * REDACTION_KEY_BYTES:
        raise ConfigError(f"{path} is damaged (expected a {2 * REDACTION_KEY_BYTES}-hex-digit key); restore it "
                          "from a backup: a new key would give every redacted id a new token")  # fmt: skip
    return PiiPolicy(redaction_key=key.encode(), email_key=None)


def env_pii_key() -> bytes | None:
    key = os.environ.get(PII_KEY_ENV)
    return key.encode() if key else None


GZIP_RATIO = 5  # a gzip file's JSON is about this many times its size, for the ingest's shard count


def input_json_bytes(files: list[tuple[int, str, str]]) -> int:
    """About how much JSON ``files`` (``discover_input``) hold: a gzip file counts ``GZIP_RATIO``
    times its size; an unreadable one 0 (the ingest's read step dead-letters it)."""

    def size(path: str) -> int:
        try:
            return os.path.getsize(path)
        except OSError:
            return 0

    return sum(size(path) * (GZIP_RATIO if path.endswith(".gz") else 1) for _, path, _ in files)


def discover_input(input_dir: Path) -> list[tuple[int, str, str]]:
    """``(file_index, absolute path, path relative to input)`` of every event file, in path order."""
    input_dir = Path(input_dir)
    if not input_dir.exists():
        raise InputError(f"input folder {input_dir} does not exist")
    if not input_dir.is_dir():
        raise InputError(f"input {input_dir} is not a folder")
    found = [p for p in input_dir.rglob("*") if p.name.endswith((".jsonl", ".jsonl.gz")) and not p.is_dir()]
    if not found:
        raise InputError(f"input folder {input_dir} has no *.jsonl or *.jsonl.gz files")
    rel = sorted(p.relative_to(input_dir).as_posix() for p in found)
    return [(i, str((input_dir / r).absolute()), r) for i, r in enumerate(rel)]


def build_config(data_dir: Path | str = DEFAULT_DATA_DIR, *, reporting_currency: str = DEFAULT_REPORTING_CURRENCY,
                 fx_rates: Path | str | None = None, input_dir: Path | str | None = None,
                 as_of: dt.date | None = None, beam_args=(), thresholds: GateThresholds | None = None,
                 shards: int | None = None, pii_key: bytes | None = None,
                 full_refresh: bool = False, materiality: tuple | None = None,
                 lake_uri: str | None = None, metrics_workers: int = 1) -> RunConfig:  # fmt: skip
    """Validate every setting (nothing is written) and load the FX table once."""
    currency = (reporting_currency or "").strip().upper()
    try:
        currency_exponent(currency)
    except UnknownCurrency as exc:
        raise ConfigError(f"--reporting-currency: {exc}") from None
    try:
        fx = load_fx(currency, fx_rates)
    except FxError as exc:
        raise ConfigError(f"--fx-rates: {exc}") from None
    if input_dir is not None:
        discover_input(Path(input_dir))  # a missing or empty input folder stops the run before any write
    if thresholds and thresholds.dead_letter_ratio_warning > thresholds.dead_letter_ratio_critical:
        raise ConfigError("--dead-letter-warning must not exceed --dead-letter-critical")
    limits = Materiality() if materiality is None else check_materiality(*materiality)
    if lake_uri and "://" in lake_uri and not lake_uri.startswith("file://"):
        lake_uri = check_lake_uri(lake_uri)
    return RunConfig(
        materiality=limits, layout=DataLayout(Path(data_dir), lake_uri or None), reporting_currency=currency, fx=fx,
        fx_source=str(Path(fx_rates).absolute()) if fx_rates else "bundled",
        input_dir=Path(input_dir) if input_dir is not None else None,
        as_of=check_as_of(as_of) if as_of else None, beam_args=tuple(beam_args),
        pii_key=pii_key if pii_key is not None else env_pii_key(),
        thresholds=thresholds or GateThresholds(), shards=shards, full_refresh=full_refresh,
        metrics_workers=metrics_workers,
    )  # fmt: skip

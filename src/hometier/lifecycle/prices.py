"""Storage prices for ``hometier plan``: a default table, overridable in configuration.

Prices are USD per GiB-month of stored data (what AWS and Google call "GB-month"; both
bill binary gigabytes), storage only: requests, retrievals, minimum storage durations,
throughput and snapshots are not counted. POSIX tiers are what the homes volume costs;
object tiers are where archived homes go.

The defaults are list prices of us-east-1 (AWS) and us-central1 (Google Cloud), recorded
in ``PRICES_DATE`` from memory of the providers' pricing pages, not fetched: check them
against the providers' pages and override them (``c.Plan.posix_prices``,
``c.Plan.object_prices``, ``c.Plan.posix_price_per_gb``, ``c.Plan.object_price_per_gb``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from hometier.errors import UsageError

GIB = 1024**3
PRICES_DATE = "2026-11"
PRICES_SOURCE = (
    "list prices of us-east-1 (AWS) and us-central1 (Google Cloud), storage only, "
    f"recorded {PRICES_DATE} without checking the providers' pages: defaults to verify "
    "and override in configuration"
)

Kind = Literal["posix", "object"]


@dataclass(frozen=True)
class Tier:
    """One storage tier and its price per GiB-month."""

    name: str
    kind: Kind
    price_per_gb: float
    description: str = ""


def _t(name: str, kind: Kind, price: float, description: str) -> tuple[str, Tier]:
    return name, Tier(name, kind, price, description)


DEFAULT_TIERS: dict[str, Tier] = dict(
    [
        # POSIX volumes that hold the homes.
        _t("efs-standard", "posix", 0.30, "Amazon EFS Standard (regional)"),
        _t("efs-one-zone", "posix", 0.16, "Amazon EFS One Zone"),
        _t("efs-ia", "posix", 0.016, "Amazon EFS Infrequent Access (plus per-GB reads)"),
        _t("ebs-gp3", "posix", 0.08, "Amazon EBS gp3 (provisioned size)"),
        _t("ebs-gp2", "posix", 0.10, "Amazon EBS gp2 (provisioned size)"),
        _t("filestore-basic-hdd", "posix", 0.16, "Google Filestore Basic HDD (provisioned)"),
        _t("filestore-basic-ssd", "posix", 0.30, "Google Filestore Basic SSD (provisioned)"),
        _t("pd-standard", "posix", 0.04, "Google Persistent Disk standard (provisioned)"),
        _t("pd-balanced", "posix", 0.10, "Google Persistent Disk balanced (provisioned)"),
        _t("pd-ssd", "posix", 0.17, "Google Persistent Disk SSD (provisioned)"),
        # Object storage that holds the archives.
        _t("s3-standard", "object", 0.023, "Amazon S3 Standard (first 50 TB)"),
        _t("s3-standard-ia", "object", 0.0125, "Amazon S3 Standard-IA (plus per-GB reads)"),
        _t("s3-glacier-ir", "object", 0.004, "Amazon S3 Glacier Instant Retrieval"),
        _t("gcs-standard", "object", 0.020, "Google Cloud Storage Standard (regional)"),
        _t("gcs-nearline", "object", 0.010, "Google Cloud Storage Nearline"),
        _t("gcs-coldline", "object", 0.004, "Google Cloud Storage Coldline"),
    ]
)


@dataclass(frozen=True)
class Prices:
    """The two tiers a plan compares, and where their prices come from."""

    posix: Tier
    object: Tier
    date: str = PRICES_DATE
    source: str = PRICES_SOURCE
    overridden: tuple[str, ...] = ()
    """Names of the tiers whose price came from configuration rather than the table."""


def tier_table(
    posix_prices: Mapping[str, float] | None = None,
    object_prices: Mapping[str, float] | None = None,
) -> dict[str, Tier]:
    """The default tiers with configured prices added or replacing theirs."""
    table = dict(DEFAULT_TIERS)
    given: list[tuple[Kind, Mapping[str, float]]] = [
        ("posix", posix_prices or {}),
        ("object", object_prices or {}),
    ]
    for kind, extra in given:
        for name, price in extra.items():
            old = table.get(name)
            if old is not None and old.kind != kind:
                raise UsageError(f"tier {name!r} is a {old.kind} tier, not {kind}")
            desc = old.description if old else "from configuration"
            table[name] = Tier(name, kind, _price(name, price), desc)
    return table


def make_prices(
    posix_tier: str,
    object_tier: str,
    *,
    posix_price: float | None = None,
    object_price: float | None = None,
    posix_prices: Mapping[str, float] | None = None,
    object_prices: Mapping[str, float] | None = None,
) -> Prices:
    """Pick the two tiers by name; an explicit price replaces the tier's.

    ``UsageError`` names the known tiers when a name is unknown or of the wrong kind.
    """
    table = tier_table(posix_prices, object_prices)
    overridden = {*(posix_prices or {}), *(object_prices or {})}
    chosen: list[Tier] = []
    for name, kind, price in (
        (posix_tier, "posix", posix_price),
        (object_tier, "object", object_price),
    ):
        tier = table.get(name)
        if tier is None or tier.kind != kind:
            known = ", ".join(sorted(t.name for t in table.values() if t.kind == kind))
            raise UsageError(f"unknown {kind} tier {name!r}; known: {known}")
        if price is not None:
            tier = Tier(tier.name, tier.kind, _price(name, price), tier.description)
            overridden.add(name)
        chosen.append(tier)
    return Prices(
        posix=chosen[0],
        object=chosen[1],
        overridden=tuple(sorted(n for n in overridden if n in (posix_tier, object_tier))),
    )


def monthly_cost(nbytes: float, tier: Tier) -> float:
    """USD per month to keep ``nbytes`` in ``tier`` (storage only)."""
    return nbytes / GIB * tier.price_per_gb


def _price(name: str, value: float) -> float:
    try:
        price = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"price of tier {name!r} is not a number: {value!r}") from None
    if not price >= 0 or price == float("inf"):
        raise UsageError(f"price of tier {name!r} must be a non-negative number, not {value!r}")
    return price


# --- requests and retrievals (``hometier plan --replay`` and the semester benchmark) ----


@dataclass(frozen=True)
class RequestPrices:
    """USD per 1,000 write (PUT, POST, LIST) and read (GET, HEAD) requests, and per GiB
    read back (the retrieval fee of infrequent-access classes)."""

    write_per_1000: float
    read_per_1000: float
    retrieval_per_gb: float = 0.0


REQUEST_PRICES: dict[str, RequestPrices] = {
    # List prices from the same pages, recorded with the same caveat (PRICES_SOURCE).
    "s3-standard": RequestPrices(0.005, 0.0004),
    "s3-standard-ia": RequestPrices(0.01, 0.001, 0.01),
    "s3-glacier-ir": RequestPrices(0.02, 0.01, 0.03),
    "gcs-standard": RequestPrices(0.005, 0.0004),
    "gcs-nearline": RequestPrices(0.01, 0.001, 0.01),
    "gcs-coldline": RequestPrices(0.02, 0.01, 0.02),
}
"""Object tiers' request prices; a tier not listed (one from configuration) costs nothing
per request."""


def request_cost(tier: Tier, writes: float, reads: float, read_bytes: float = 0.0) -> float:
    """USD for ``writes`` and ``reads`` requests and ``read_bytes`` retrieved from ``tier``."""
    p = REQUEST_PRICES.get(tier.name)
    if p is None:
        return 0.0
    return (
        writes / 1000 * p.write_per_1000
        + reads / 1000 * p.read_per_1000
        + read_bytes / GIB * p.retrieval_per_gb
    )

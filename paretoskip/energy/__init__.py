"""Energy per call of a workload, read from a hardware counter when one is readable.

Backends (``make_energy_meter(backend, **options)``):

``rapl``
    Linux powercap RAPL counters (``/sys/class/powercap/*/energy_uj``, µJ).
``nvml``
    NVIDIA's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ), from the
    optional ``nvidia-ml-py`` package (``pip install 'paretoskip[nvml]'``).
``zeus``
    ``zeus.monitor.ZeusMonitor`` (``pip install 'paretoskip[zeus]'``).
``estimated``
    Not a measurement: process CPU time × a configured power per busy core. Used only when
    asked for by name, and labelled ``estimated:cpu-time`` everywhere.
``none``
    No energy: every reading is unavailable.
``auto``
    The first of ``rapl``, ``nvml``, ``zeus`` that really reads here, else ``none``. It
    never picks ``estimated``.

An energy that was not measured is ``math.nan`` with ``source="unavailable"`` and a reason;
it is never 0. A counter that does not advance during a window (a virtual machine exposing a
frozen counter, Zeus with no hardware) gives an unavailable reading too, never 0 J.

Measurement protocol (:meth:`EnergyMeter.measure`): the workload is called again and again
inside a window until the window lasts at least ``min_seconds`` (NVML's counter only moves
every ~20–100 ms, so keep 1 s there); the counter is read before and after the window and the
difference divided by the number of calls. Several windows give the median energy per call
and its inter-quartile range. The counters measure the whole package or GPU, not this
process alone: keep the machine otherwise idle and never measure latency or energy of two
workloads at once. Warm the workload up before measuring (the first calls allocate).

RAPL domains, and which are summed
----------------------------------
Linux registers, for each CPU package, the package domain as a top-level zone
(``intel-rapl:N``, name ``package-N`` or ``package-N-die-M``) and every other domain of that
package as its sub-zone (``intel-rapl:N:M``): ``core`` (PP0), ``uncore`` (PP1, graphics) and,
on servers and some clients, ``dram``. The hierarchy is a power-*limiting* topology, not an
energy one: ``core`` and ``uncore`` are parts of the package energy, but ``dram`` is not
(RAPL's package domain covers cores, caches and the uncore; DRAM is its own domain). The
platform domain ``psys`` (a separate top-level zone on client machines) covers the whole
SoC platform, packages included. AMD processors (Linux >= 5.8) use the same ``intel-rapl``
names. So the total here is

    every top-level ``package*`` zone + every ``dram`` zone (wherever it sits),

``core``/``uncore``/other sub-zones are reported per domain but not summed (they are inside
their package), and ``psys`` is reported but not summed when packages exist (it contains
them); with no package zone, ``psys`` alone is the total, and with neither, every top-level
zone. The same package exposed twice through another control type (``intel-rapl-mmio:N``
next to ``intel-rapl:N``) is counted once, from the MSR interface. Every domain's energy per
call is in :attr:`EnergyReading.domains`, keyed ``package-0``, ``package-0/dram``, ...

The 32-bit RAPL counter wraps: after ``max_energy_range_uj`` it goes back to 0, so when a
reading is smaller than the one before, the difference is
``end - start + max_energy_range_uj + 1``. (The kernel reports the counter in whole
hardware energy units, ~15–61 µJ, so the true step over the wrap is one unit rather than
1 µJ: an error below 0.1 mJ per wrap.) One wrap between two reads is undone; two cannot be
seen, so a window must be shorter than the wrap period (``max_energy_range_uj`` ≈ 262 kJ,
over 20 minutes at 200 W).

Reading ``energy_uj`` is root-only on kernels patched for CVE-2020-8694 (PLATYPUS, a power
side channel). :meth:`RaplMeter.check` says so and how to grant read access.

Adding a backend
----------------
One module here with an :class:`EnergyMeter` subclass (``name``, :meth:`~EnergyMeter.check`,
``_settings``, ``_begin``/``_end``), imported and passed to :func:`register_backend` below;
its options are its constructor's keyword arguments.

``strict``
----------
Every backend takes ``strict`` (default ``False``). Without it, a meter that cannot read
returns unavailable readings (NaN plus the reason), so a search goes on without energy.
With ``strict=True``, :func:`make_energy_meter` raises :class:`~paretoskip.errors.
EnergyUnavailableError` at once when the backend (or, for ``auto``, every candidate) cannot
read, and :meth:`EnergyMeter.measure` raises it instead of returning an unavailable
reading. ``none`` never raises: it is a choice, not a failure.

Example:
    >>> from paretoskip.energy import make_energy_meter
    >>> r = make_energy_meter("none").measure(lambda: None, min_seconds=0.0, windows=1)
    >>> r.available, r.source, r.reason
    (False, 'unavailable', "energy measurement disabled (backend 'none')")
    >>> meter = make_energy_meter("estimated", watts_per_core=10.0)
    >>> r = meter.measure(lambda: sum(range(10_000)), min_seconds=0.01, windows=3)
    >>> r.source, r.joules > 0
    ('estimated:cpu-time', True)
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError, EnergyUnavailableError
from ._base import EnergyMeter, EnergyReading, PowerReading
from ._estimated import DEFAULT_WATTS_PER_CORE, EstimatedMeter
from ._null import NullMeter
from ._nvml import NvmlMeter, nvml_device_record, nvml_uuid_of
from ._rapl import DEFAULT_POWERCAP_ROOT, RaplMeter
from ._zeus import ZeusMeter

__all__ = [
    "ENERGY_BACKENDS",
    "DEFAULT_POWERCAP_ROOT",
    "DEFAULT_WATTS_PER_CORE",
    "EnergyReading",
    "EnergyMeter",
    "RaplMeter",
    "NvmlMeter",
    "ZeusMeter",
    "EstimatedMeter",
    "NullMeter",
    "register_backend",
    "make_energy_meter",
    "make_device_energy_meter",
    "DEVICE_BACKENDS",
    "PowerReading",
    "nvml_device_record",
    "nvml_uuid_of",
    "probe_energy_meters",
]

logger = logging.getLogger(__name__)

#: backend name -> (class, accepted options, tried by ``auto``), in registration order
_BACKENDS: dict[str, tuple[type[EnergyMeter], tuple[str, ...], bool]] = {}


def register_backend(
    cls: type[EnergyMeter], *, auto: bool = False, options: Sequence[str] | None = None
) -> type[EnergyMeter]:
    """Make ``cls`` a backend of :func:`make_energy_meter` under ``cls.name``.

    ``options`` default to the keyword arguments of its constructor; ``auto`` backends are
    tried by ``auto`` in registration order.  A name is registered once.
    """
    if not cls.name or cls.name in _BACKENDS or cls.name == "auto":
        raise ConfigError(f"energy backend name {cls.name!r} is empty, reserved or taken")
    if options is None:
        options = [p for p in inspect.signature(cls).parameters if p not in ("self",)]
    _BACKENDS[cls.name] = (cls, tuple(options), auto)
    return cls


register_backend(RaplMeter, auto=True)
register_backend(NvmlMeter, auto=True)
register_backend(ZeusMeter, auto=True)
register_backend(EstimatedMeter)
register_backend(NullMeter, options=("strict",))

#: Names accepted by :func:`make_energy_meter`.
ENERGY_BACKENDS: tuple[str, ...] = ("auto", *_BACKENDS)


def _auto_order() -> tuple[str, ...]:
    return tuple(n for n, (_, _, auto) in _BACKENDS.items() if auto)


def _all_options() -> tuple[str, ...]:
    return tuple(sorted({o for _, opts, _ in _BACKENDS.values() for o in opts}))


def _backend_name(backend: object) -> str:
    name = backend.strip().lower() if isinstance(backend, str) else backend
    if name not in ENERGY_BACKENDS:
        raise ConfigError(
            f"unknown energy backend {backend!r}; choose one of {', '.join(ENERGY_BACKENDS)}"
        )
    assert isinstance(name, str)
    return name


def _check_option_names(options: Mapping[str, Any], accepted: Sequence[str], what: str) -> None:
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for {what}; "
            f"accepted: {', '.join(accepted)}"
        )


def _build(name: str, options: Mapping[str, Any]) -> EnergyMeter:
    return _BACKENDS[name][0](**{k: v for k, v in options.items() if k in _BACKENDS[name][1]})


def make_energy_meter(backend: str = "none", **options: Any) -> EnergyMeter:
    """The energy meter named ``backend``, one of :data:`ENERGY_BACKENDS`.

    Options: ``powercap_root`` (rapl), ``device``, ``uuid`` and ``stall_seconds`` (nvml),
    ``gpu_indices`` and
    ``cpu_indices`` (zeus), ``watts_per_core`` (estimated) and ``strict`` (all; see the
    module docstring). A named backend accepts only its own options; ``auto`` accepts those
    of rapl, nvml and zeus (and ``strict``) and passes each its own.

    ``auto`` returns the first of rapl, nvml, zeus whose :meth:`~EnergyMeter.check` really
    reads, else a ``none`` meter whose readings say why nothing could be read; it never picks
    ``estimated``. Its choice, and why the backends tried before it did not read, are logged
    and recorded under ``"auto"`` in the meter's :meth:`~EnergyMeter.describe`.

    Raises:
        ConfigError: unknown backend or option, or a bad option value.
        EnergyUnavailableError: ``strict=True`` and the backend cannot read here.

    Example:
        >>> make_energy_meter("estimated", watts_per_core=12.5).describe()["watts_per_core"]
        12.5
        >>> make_energy_meter("rapl", powercap_root="/nonexistent").check()[0]
        False
    """
    name = _backend_name(backend)
    if name == "auto":
        return _auto(options)
    _check_option_names(options, _BACKENDS[name][1], f"energy backend {name!r}")
    meter = _build(name, options)
    if meter.strict and name != "none":
        ok, why = meter.check()
        if not ok:
            raise EnergyUnavailableError(f"energy backend {name!r} cannot read here: {why}")
    return meter


def _auto(
    options: Mapping[str, Any],
    order: Sequence[str] | None = None,
    per_backend: Mapping[str, Mapping[str, Any]] | None = None,
) -> EnergyMeter:
    order = tuple(order if order is not None else _auto_order())
    accepted = tuple(sorted({o for n in order for o in _BACKENDS[n][1]}))
    _check_option_names(options, accepted, "energy backend 'auto'")
    strict = options.get("strict", False)
    candidate_options = {k: v for k, v in options.items() if k != "strict"}
    per_backend = per_backend or {}
    # Validate every candidate's options before reading any counter.
    candidates = [
        _build(name, {**per_backend.get(name, {}), **candidate_options}) for name in order
    ]
    rejected: dict[str, str] = {}
    for meter in candidates:
        try:
            ok, detail = meter.check()
        except Exception as exc:  # a backend bug must not stop the choice
            ok, detail = False, f"check failed: {exc!r}"
        if ok:
            untried = [
                m.name for m in candidates if m.name != meter.name and m.name not in rejected
            ]
            meter.strict = bool(strict)
            meter.auto_choice = {
                "chosen_by": "auto",
                "why": detail,
                "not_chosen": dict(rejected),
                "not_tried": untried,
            }
            logger.info(
                "energy backend auto chose %r: %s%s",
                meter.name,
                detail,
                "".join(f"; {n} did not read: {r}" for n, r in rejected.items()),
            )
            return meter
        rejected[meter.name] = detail
        meter.close()
    summary = "; ".join(f"{n}: {r}" for n, r in rejected.items())
    if strict:
        raise EnergyUnavailableError(f"no energy counter is readable here ({summary})")
    logger.info("energy backend auto chose 'none': no counter reads here (%s)", summary)
    meter = NullMeter(reason=f"no energy counter is readable here (backend 'auto': {summary})")
    meter.auto_choice = {
        "chosen_by": "auto",
        "why": f"none of {', '.join(order)} reads here",
        "not_chosen": dict(rejected),
        "not_tried": [],
    }
    return meter


#: The backends that measure a model where it runs, per device type, in ``auto``'s order.
DEVICE_BACKENDS: Mapping[str, tuple[str, ...]] = {
    "cpu": ("rapl", "zeus"),
    "cuda": ("nvml", "zeus"),
}


def make_device_energy_meter(
    backend: str = "none", device: Any = "cpu", **options: Any
) -> EnergyMeter:
    """The energy meter for a model that runs on ``device``: it reads *that* device.

    :func:`make_energy_meter` knows nothing of where the model runs, so ``auto`` may pick
    NVML on a machine with a GPU while the candidate runs on the CPU (measuring a GPU that
    never ran it).  Here:

    * ``device`` ``"cpu"``: ``auto`` tries ``rapl`` then ``zeus`` (its CPU packages only);
      ``nvml`` is refused; ``rapl``, ``zeus``, ``estimated`` and ``none`` are accepted.
    * ``device`` ``"cuda[:N]"``: ``auto`` tries ``nvml`` (the GPU found by its UUID, so
      ``CUDA_VISIBLE_DEVICES`` and the CUDA device order do not matter) then ``zeus`` (that
      GPU only); ``rapl`` and ``estimated`` (they measure or estimate the host CPU) are
      refused.

    ``options`` are those of :func:`make_energy_meter`; the device options (``uuid`` or
    ``device`` for nvml, ``gpu_indices``/``cpu_indices`` for zeus) are filled in unless
    given.

    Raises:
        ConfigError: an unknown backend or option, or a backend that does not measure
            ``device``.
        EnergyUnavailableError: ``strict=True`` and the backend cannot read here.

    Example:
        >>> make_device_energy_meter("nvml", "cpu")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        paretoskip.errors.ConfigError: energy backend 'nvml' reads an NVIDIA GPU's counter, ...
        >>> make_device_energy_meter("estimated", "cpu").source
        'estimated:cpu-time'
    """
    import torch

    name = _backend_name(backend)
    dev = torch.device(device)
    if dev.type not in DEVICE_BACKENDS:
        raise ConfigError(
            f"device {str(dev)!r} has no energy backends; accepted devices: "
            f"{', '.join(DEVICE_BACKENDS)}"
        )
    if name == "none":
        return make_energy_meter("none", **options)
    per_backend: dict[str, dict[str, Any]] = {}
    if dev.type == "cpu":
        if name == "nvml":
            raise ConfigError(
                "energy backend 'nvml' reads an NVIDIA GPU's counter, but the model runs on the "
                "cpu: it would measure a GPU that never ran the candidate; use 'rapl' or 'auto', "
                "or measure.device = 'cuda'"
            )
        per_backend["zeus"] = {"gpu_indices": []}
    else:
        if name in ("rapl", "estimated"):
            raise ConfigError(
                f"energy backend {name!r} measures the host CPU, but the model runs on "
                f"{dev}: it would not measure the device that ran the candidate; use 'nvml', "
                "'zeus' or 'auto' (or 'none')"
            )
        from ._nvml import nvml_uuid_of

        index = dev.index if dev.index is not None else torch.cuda.current_device()
        uuid = nvml_uuid_of(torch.device("cuda", index))
        if "uuid" not in options and "device" not in options:
            per_backend["nvml"] = {"uuid": uuid} if uuid is not None else {"device": index}
        per_backend["zeus"] = {"gpu_indices": [index], "cpu_indices": []}
    if name == "auto":
        return _auto(options, DEVICE_BACKENDS[dev.type], per_backend)
    merged = {k: v for k, v in per_backend.get(name, {}).items() if k in _BACKENDS[name][1]}
    merged.update(options)
    return make_energy_meter(name, **merged)


def probe_energy_meters(**options: Any) -> list[dict[str, Any]]:
    """Whether each backend of :data:`ENERGY_BACKENDS` reads here (for ``paretoskip info``).

    Returns one ``{"backend", "ok", "detail"}`` per backend; the ``auto`` row says which
    backend ``auto`` would choose. ``strict`` is ignored; other options are those of
    :func:`make_energy_meter`.

    Example:
        >>> rows = probe_energy_meters(powercap_root="/nonexistent")
        >>> [r["backend"] for r in rows] == list(ENERGY_BACKENDS)
        True
    """
    _check_option_names(options, _all_options(), "probe_energy_meters")
    options = {k: v for k, v in options.items() if k != "strict"}
    rows: dict[str, dict[str, Any]] = {}
    for name in ENERGY_BACKENDS:
        if name == "auto":
            continue
        meter = _build(name, options)
        try:
            ok, detail = meter.check()
        except Exception as exc:
            ok, detail = False, f"check failed: {exc!r}"
        finally:
            meter.close()
        rows[name] = {"backend": name, "ok": ok, "detail": detail}
    chosen = next((n for n in _auto_order() if rows[n]["ok"]), None)
    if chosen is None:
        auto_row = {
            "backend": "auto",
            "ok": False,
            "detail": "would choose none: none of rapl, nvml, zeus reads here",
        }
    else:
        auto_row = {"backend": "auto", "ok": True, "detail": f"would choose {chosen}"}
    rows["auto"] = auto_row
    return [rows[name] for name in ENERGY_BACKENDS]

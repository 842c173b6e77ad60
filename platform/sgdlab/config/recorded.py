"""Recorded configs rerun with runtime changes: what `sgdlab resubmit` may and may not override.

Only the non-identity groups (fault, resources, cluster, tracking) may change: anything else would make the
rerun a different trial. The fault group is reset to its defaults first: fault settings act only in the
command that names them, never in a later resubmit.
"""

from __future__ import annotations

import copy
import functools

from sgdlab.config.compose import Composer, parse_override
from sgdlab.config.schema import NON_IDENTITY_GROUPS, NON_IDENTITY_KEYS, SINGLE, ConfigError
from sgdlab.config.typecheck import check_group
from sgdlab.config.validation import check_report, validate


@functools.cache
def _defaults() -> dict:
    """The default trial config as Hydra composes it (composed once: about 0.1 s a time)."""
    return Composer().raw_many([[]])[0]


def parse_runtime_overrides(overrides: list[str]) -> dict[tuple[str, str], object]:
    """{(group, key): value} from `group.key=value` strings; identity keys are refused."""
    changes = {}
    for line in overrides:
        override = parse_override(line)
        key = override.get_key_element()
        group, _, name = key.partition(".")
        if group not in NON_IDENTITY_GROUPS or not name or "." in name or override.is_sweep_override():
            raise ConfigError(f"{key}: resubmit reruns trials exactly as recorded; only single values of "
                              f"{', '.join(f'{g}.*' for g in NON_IDENTITY_GROUPS)} may be overridden")
        changes[(group, name)] = override.value()
    defaults = _defaults()
    for group in {group for group, _ in changes}:  # types now, whether or not a trial will rerun
        check_group(group, {**defaults[group], **{n: v for (g, n), v in changes.items() if g == group}},
                    SINGLE[group])
    return changes


def runtime_value(changes: dict[tuple[str, str], object], group: str, name: str):
    """The value of group.name that a command runs with: its override in `changes`, else the default config's."""
    return changes.get((group, name), _defaults()[group][name])


def report_settings(overrides: list[str]) -> dict:
    """The report group a report is written with: the defaults, then the single-value `report.*` overrides among
    `overrides` (a sweep file's and the command's; the others are the trials' business), checked."""
    report = dict(_defaults()["report"])
    for line in overrides:
        override = parse_override(line)
        group, _, name = override.get_key_element().partition(".")
        if group == "report":
            if override.is_sweep_override():
                raise ConfigError(f"report.{name}: a report takes one value, got {line.split('=', 1)[1]}")
            report[name] = override.value()
    report = check_group("report", report, SINGLE["report"])
    check_report(report)
    return report


def apply_runtime_overrides(config: dict, changes: dict[tuple[str, str], object]) -> dict:
    """A copy of a recorded config with the fault group reset and the changes applied and validated (types and
    ranges, as for a new trial)."""
    out, defaults = copy.deepcopy(config), copy.deepcopy(_defaults())
    out["fault"] = defaults["fault"]
    for group in ("exec", "report"):  # configs recorded before these groups existed
        out.setdefault(group, defaults[group])
    for group, name in NON_IDENTITY_KEYS:  # and before train.compile_after
        out[group].setdefault(name, defaults[group][name])
    for (group, name), value in changes.items():
        out[group][name] = value
    for group in NON_IDENTITY_GROUPS:
        out[group] = check_group(group, out[group], SINGLE[group])
    validate({**out, "optim": {**out["optim"], "temperature": None}})  # the recorded lr stands
    return out

"""systemd/zflood@.service: systemd accepts it as written, and it keeps the promises DESIGN.md
makes (notify with watchdog, dynamic user, state and runtime directories, netlink allowed).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "zflood@.service"
EXEC = "/opt/zflood/bin/zflood"  # the venv the README installs into (PEP 668)
SYSUSERS = UNIT.parent / "zflood.sysusers"


def _directives(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values in order; enough of systemd's syntax for this unit file."""
    found: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if m := re.fullmatch(r"\[(.+)\]", line):
            section = m.group(1)
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {raw!r}"
        found.setdefault((section, key.strip()), []).append(value.strip())
    return found


def _one(d: dict[tuple[str, str], list[str]], section: str, key: str) -> str:
    values = d.get((section, key))
    assert values is not None, f"{key}= missing from [{section}]"
    assert len(values) == 1, f"{key}= set {len(values)} times: {values}"
    return values[0]


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    # verify fails a unit whose ExecStart= binary does not exist; the test machine need not
    # have zflood installed system-wide, so the copy points at a stand-in executable.
    stand_in = tmp_path / "zflood"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    text = UNIT.read_text()
    assert f"ExecStart={EXEC} " in text
    units = tmp_path / "units"
    units.mkdir()
    # An instance, as `systemctl start zflood@family` would load it: %i expands to "family".
    (units / "zflood@family.service").write_text(text.replace(EXEC, str(stand_in)))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(units / "zflood@family.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Lines about other units (systemd's own, when the machine's copies are odd) are not
    # this unit's business; anything naming ours is a warning to fix.
    ours = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if "zflood" in line or str(units) in line
    ]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr


def test_the_unit_keeps_the_designs_promises() -> None:
    d = _directives(UNIT.read_text())
    svc = "Service"
    assert "%i" in _one(d, "Unit", "Description")
    assert _one(d, svc, "Type") == "notify"
    assert _one(d, svc, "NotifyAccess") == "main"
    assert _one(d, svc, "WatchdogSec") == "20"
    assert _one(d, svc, "DynamicUser") == "yes"
    # One dynamic user per instance: by default every instance would share the uid "zflood".
    assert _one(d, svc, "User") == "zflood-%i"
    assert _one(d, svc, "StateDirectory") == "zflood/%i"
    assert _one(d, svc, "StateDirectoryMode") == "0700"
    assert _one(d, svc, "RuntimeDirectory") == "zflood/%i"
    assert _one(d, svc, "Restart") == "on-failure"
    assert _one(d, svc, "UMask") == "0077"
    assert _one(d, svc, "KillSignal") == "SIGTERM"
    assert _one(d, svc, "ExecStart").startswith(f"{EXEC} ")
    assert _one(d, svc, "ExecStart").endswith(" run --socket-group zflood")
    # The household's users reach the sockets through the group the sysusers.d file makes.
    assert _one(d, svc, "SupplementaryGroups") == "zflood"
    assert _one(d, svc, "RuntimeDirectoryMode") == "0750"
    assert _one(d, svc, "RestartPreventExitStatus") == "78"
    # The join code arrives as a credential, optional once the group is in the state dir.
    assert _one(d, svc, "LoadCredential") == "join:/etc/zflood/%i.join"
    assert _one(d, svc, "SetCredential").startswith("join:")
    families = _one(d, svc, "RestrictAddressFamilies").split()
    assert {"AF_NETLINK", "AF_INET", "AF_INET6", "AF_UNIX"} == set(families)
    assert _one(d, svc, "CapabilityBoundingSet") == ""
    for hardening in (
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "NoNewPrivileges",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "RestrictNamespaces",
        "LockPersonality",
        "MemoryDenyWriteExecute",
        "RestrictRealtime",
        "RestrictSUIDSGID",
    ):
        assert _one(d, svc, hardening) in ("yes", "strict"), hardening
    assert _one(d, svc, "SystemCallFilter") == "@system-service"
    assert _one(d, "Install", "WantedBy") == "multi-user.target"
    assert "network-online.target" in _one(d, "Unit", "After")
    assert "network-online.target" in _one(d, "Unit", "Wants")


def test_the_sysusers_file_creates_the_zflood_group() -> None:
    lines = [line.split() for line in SYSUSERS.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines == [["g", "zflood", "-"]]

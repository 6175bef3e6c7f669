"""The PowerShell the Hyper-V adapter runs over WinRM, and the reading of what it prints."""

import base64
import json
import re
import xml.etree.ElementTree as ET
from typing import Any

from adapters.base import AdapterError

# Microsoft.HyperV.PowerShell.VMState: name -> (number, heartbeat state). One rule on every
# platform (docs/protocol-decisions.md, "States across platforms"): only a settled running VM is
# `running`; coming up (Starting, Resuming) is `unknown`, going down maps to where it goes
# (Stopping -> stopped, Saving -> suspended, Pausing -> paused); a reset stays powered on.
# "...Critical" variants (storage lost) keep the base state's mapping.
VM_STATES: dict[str, tuple[int, str]] = {
    "Other": (1, "unknown"), "Running": (2, "running"), "Off": (3, "stopped"),
    "Stopping": (4, "stopped"), "Saved": (6, "suspended"), "Paused": (9, "paused"),
    "Starting": (10, "unknown"), "Reset": (11, "running"), "Saving": (32773, "suspended"),
    "Pausing": (32776, "paused"), "Resuming": (32777, "unknown"), "FastSaved": (32779, "suspended"),
    "FastSaving": (32780, "suspended"), "ForceShutdown": (32781, "stopped"),
    "ForceReboot": (32782, "running"), "Hibernated": (32783, "suspended"),
    "ComponentServicing": (32784, "unknown"), "RunningCritical": (32785, "running"),
    "OffCritical": (32786, "stopped"), "StoppingCritical": (32787, "stopped"),
    "SavedCritical": (32788, "suspended"), "PausedCritical": (32789, "paused"),
    "StartingCritical": (32790, "unknown"), "ResetCritical": (32791, "running"),
    "SavingCritical": (32792, "suspended"), "PausingCritical": (32793, "paused"),
    "ResumingCritical": (32794, "unknown"), "FastSavedCritical": (32795, "suspended"),
    "FastSavingCritical": (32796, "suspended"),
}
_BY_NAME = {k.lower(): v[1] for k, v in VM_STATES.items()}
_BY_NUMBER = {v[0]: v[1] for v in VM_STATES.values()}

# The JSON is sent base64-encoded UTF-8: the shell's console code page (437 by default) would
# mangle non-ASCII Notes, and base64 is immune to BOMs and line wrapping. Arrays are wrapped in
# @() and the Array type data removed against ConvertTo-Json's single-object and {"value":...} quirks.
_SCRIPT = """$ErrorActionPreference='Stop';$ProgressPreference='SilentlyContinue'
Remove-TypeData System.Array -ErrorAction SilentlyContinue
$errs=@();$vms=@()
{get_vms}
$sel=@($vms|Select-Object @{{n='Id';e={{$_.Id.ToString()}}}},Name,@{{n='State';e={{$_.State.ToString()}}}},\
Notes,ComputerName,IsClustered)
$j=ConvertTo-Json -InputObject @{{vms=$sel;errors=@($errs)}} -Compress -Depth 4
[Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes($j))"""
# One host: any failure fails the poll. A cluster: a node that is down or refuses is a partial error;
# Paused (drained) and Joining nodes are asked too, as they may still run VMs.
_LOCAL = "$vms=@(Get-VM)"
_CLUSTER = ("$all=@(Get-ClusterNode)\n"
            "foreach($d in @($all|?{$_.State -eq 'Down'})){$errs+=\"$($d.Name): cluster node $($d.State)\"}\n"
            "foreach($n in @($all|?{$_.State -ne 'Down'}|%{$_.Name})){try{$vms+=@(Get-VM -ComputerName $n)}"
            "catch{$errs+=\"${n}: $($_.Exception.Message)\"}}")


def build_script(cluster: bool) -> str:
    return _SCRIPT.format(get_vms=_CLUSTER if cluster else _LOCAL)


def powershell_command(script: str) -> str:
    encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
    return f"powershell.exe -NoProfile -NonInteractive -EncodedCommand {encoded}"


def decode_clixml(data: bytes) -> str:
    """The Error-stream text of PowerShell's `#< CLIXML` stderr (progress records are dropped)."""
    text = data.decode("utf-8", errors="replace")
    if not text.startswith("#< CLIXML"):
        return text.strip()
    out: list[str] = []
    for chunk in re.findall(r"<Objs.*?</Objs>", text, re.S):
        try:
            root = ET.fromstring(chunk)
        except ET.ParseError:
            continue
        out += [el.text or "" for el in root.iter() if el.tag.endswith("}S") and el.get("S") == "Error"]
    msg = re.sub(r"_x([0-9A-Fa-f]{4})_", lambda m: chr(int(m.group(1), 16)), "".join(out))
    # _xHHHH_ escapes UTF-16 code units: a character beyond U+FFFF comes as two, which only
    # make one character once joined (a lone half is replaced rather than kept: it is no text)
    return msg.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace").strip()


def map_state(value: Any) -> str:
    if isinstance(value, bool):
        return "unknown"
    if isinstance(value, int):
        return _BY_NUMBER.get(value, "unknown")
    if isinstance(value, str):
        v = value.strip()
        return _BY_NUMBER.get(int(v), "unknown") if v.isdigit() else _BY_NAME.get(v.lower(), "unknown")
    return "unknown"


def parse_output(stdout: bytes) -> tuple[list[dict[str, Any]], list[str]]:
    """Decode the script's base64 JSON; tolerate ConvertTo-Json's shapes (object, null, {"value"})."""
    lines = [ln.strip() for ln in stdout.decode("ascii", errors="replace").splitlines() if ln.strip()]
    if not lines:
        return [], []  # nothing at all: no VM (PowerShell prints nothing for an empty pipeline)
    try:
        doc = json.loads(base64.b64decode(lines[-1], validate=True).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterError("malformed script output", f"{exc}: {lines[-1][:200]!r}") from exc
    if isinstance(doc, dict) and "vms" in doc:
        vms, errs = doc.get("vms"), doc.get("errors")
    else:
        vms, errs = doc, None  # a bare ConvertTo-Json of the VMs
    if isinstance(vms, dict) and isinstance(vms.get("value"), list) and "Count" in vms:
        vms = vms["value"]  # Windows PowerShell 5.1 serialising an ETS-wrapped array
    if vms is None:
        vms = []
    elif isinstance(vms, dict):
        vms = [vms]  # a single VM comes out as an object, not an array
    if not isinstance(vms, list) or not all(isinstance(v, dict) for v in vms):
        raise AdapterError("malformed script output", f"vms is {type(vms).__name__}")
    errors = [errs] if isinstance(errs, str) else [str(e) for e in errs or [] if e]
    return vms, errors

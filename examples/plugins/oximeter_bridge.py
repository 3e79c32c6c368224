#!/usr/bin/env python3
"""Example wardgate plug-in: a bridge from a device that only a vendor SDK can read.

Copy this file, replace read_device() with calls to your device's SDK, and configure it:

    [[exec]]
    name = "bed12-oximeter"
    command = "/usr/local/lib/wardgate/plugins/oximeter_bridge.py"
    args = ["--replay", "/usr/local/lib/wardgate/plugins/oximeter_demo.csv"]
    working_dir = "/var/lib/wardgate/plugins/bed12-oximeter"

The protocol (docs/plugins.md has all of it):
  * stdout: one JSON object per line, flushed at once, schema version 1:
      {"v":1,"type":"observation","code":"MDC_PULS_OXIM_SAT_O2","value":97,"unit":"%","record":17}
      {"v":1,"type":"event","kind":"connected","detail":"..."}
    Nothing else may go to stdout: a line that is not this schema is counted as bad.
  * stderr: diagnostics for the journal (wardgate logs each line as "plugin <name>: ...").
    Never print patient values there.
  * stdin: commands from wardgate, one JSON object per line; ignore types you do not know.
  * SIGTERM, or the end of stdin: exit promptly (wardgate sends SIGKILL after
    [[exec]] stop_grace_s; a plug-in whose wardgate was killed sees its stdin end).
  * Exit on a fatal error: wardgate restarts the plug-in with a growing wait (0.5 s .. 30 s).

Standard library only (no pip install on the gateway): it runs with Debian's python3.
Stand-in data: oximeter_demo.csv holds the SpO2 and pulse of every live frame of a real Contec
CMS50E capture (data/real/serial/cms50e_live_capture.bin, decoded by wardgate's cms50
decoder with numerics_every_s = 0; a unit test in adapters/src/serial/protocols/cms50.rs
checks it row for row), replayed as if this bridge read them from a device.
"""

import argparse
import json
import os
import signal
import sys
import threading
import time

SCHEMA = 1

# MDC codes by name (wardgate_adapters::observation::mdc::NAMES) or number; units in UCUM.
SPO2 = "MDC_PULS_OXIM_SAT_O2"
PULSE = "MDC_PULS_OXIM_PULS_RATE"

_out_lock = threading.Lock()


def emit(obj):
    """Writes one line to wardgate. Flushes at once: a buffered line is a late reading."""
    line = json.dumps(obj, separators=(",", ":"))
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def observation(code, value, unit, record=None, status=None, device_time=None):
    obj = {"v": SCHEMA, "type": "observation", "code": code, "value": value, "unit": unit}
    if record is not None:
        obj["record"] = record          # the device's own sequence number: upstream sees gaps
    if status:
        obj["status"] = status          # e.g. ["probe-off"]: printable, no spaces
    if device_time is not None:
        obj["device_time"] = device_time  # "YYYY-MM-DDThh:mm:ss", the device's local time
    emit(obj)


def event(kind, detail=""):
    """kind: connected, disconnected or error. The detail is for installers: no patient data."""
    emit({"v": SCHEMA, "type": "event", "kind": kind, "detail": detail})


def log(message):
    print(message, file=sys.stderr, flush=True)


def read_device(args):
    """Yields (spo2 %, pulse /min) readings. REPLACE THIS with your vendor SDK.

    Here: the rows of a CSV file "spo2,pulse" (a header line is skipped), one every 1/rate s.
    A value the device marks as missing is None (no observation is sent for it).
    """
    with open(args.replay, encoding="ascii") as f:
        rows = [line.strip() for line in f if line.strip() and not line[0].isalpha()]
    period = 1.0 / args.rate if args.rate > 0 else 0.0
    n = 0
    while True:
        for row in rows:
            spo2, pulse = (None if v in ("", "-") else float(v) for v in row.split(","))
            yield spo2, pulse
            n += 1
            if args.count and n >= args.count:
                return
            if period:
                time.sleep(period)
        if not args.loop:
            return


def read_commands():
    """Commands from wardgate on stdin. A real bridge would pass them to the device."""
    for line in sys.stdin:
        try:
            cmd = json.loads(line)
        except ValueError:
            log("ignoring a stdin line that is not JSON")
            continue
        if cmd.get("v") != SCHEMA:
            continue
        if cmd.get("type") == "send_bytes":
            log("command send_bytes: %d base64 characters" % len(cmd.get("data", "")))
        # Unknown command types are ignored: newer wardgate versions may add some.
    # stdin closed: wardgate is stopping us, or is gone (killed). Either way: leave.
    os._exit(0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replay", required=True, help="CSV file spo2,pulse standing in for the device")
    p.add_argument("--rate", type=float, default=1.0, help="readings per second (0: as fast as possible)")
    p.add_argument("--count", type=int, default=0, help="stop after this many readings (0: no limit)")
    p.add_argument("--loop", action="store_true", help="replay the file again and again")
    p.add_argument("--exit-code", type=int, default=None,
                   help="exit with this status after the replay (default: stay up until stopped)")
    args = p.parse_args()

    if os.environ.get("WARDGATE_PLUGIN_SCHEMA", str(SCHEMA)) != str(SCHEMA):
        log("wardgate speaks plug-in schema %s, this plug-in %d" % (os.environ["WARDGATE_PLUGIN_SCHEMA"], SCHEMA))
        return 2

    # SIGTERM from wardgate: leave at once (Python would otherwise die mid-write).
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    threading.Thread(target=read_commands, daemon=True).start()

    name = os.environ.get("WARDGATE_PLUGIN", "oximeter_bridge")
    log("%s starting (schema %d, pid %d, cwd %s)" % (name, SCHEMA, os.getpid(), os.getcwd()))
    event("connected", "replaying %s" % os.path.basename(args.replay))
    record = 0
    try:
        for spo2, pulse in read_device(args):
            record += 1
            if spo2 is not None:
                observation(SPO2, spo2, "%", record=record)
            if pulse is not None:
                observation(PULSE, pulse, "{beat}/min", record=record)
    except BrokenPipeError:  # wardgate went away
        return 0
    except OSError as e:  # the device (here: the file) went away: exit, wardgate restarts us
        event("error", "device read failed: %s" % e.strerror)
        return 1
    event("disconnected", "replay finished after %d readings" % record)
    if args.exit_code is not None:
        log("%s: replay done, exiting with status %d" % (name, args.exit_code))
        return args.exit_code
    log("%s: replay done; idle until stopped" % name)
    while True:  # a bridge whose device is gone stays up (wardgate stops it with SIGTERM)
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())

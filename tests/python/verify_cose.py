#!/usr/bin/env python3
"""Independent verifier of wardgate batch messages (DESIGN §5, docs/wire-format.md).

Written against the RFCs only, sharing no code with wardgate: `cbor2` decodes CBOR and
`cryptography` checks signatures.

For every message file it checks:
  - CBOR tag 18 (COSE_Sign1, RFC 9052 §4.2) around a 4-element array
    [protected: bstr, unprotected: map, payload: bstr (not detached), signature: bstr];
  - protected header {1 (alg): -7 (ES256) or -8 (EdDSA), 4 (kid): bstr}, alg matching the key;
  - kid == SHA-256 of the gateway certificate's SubjectPublicKeyInfo DER;
  - the signature over Sig_structure = ["Signature1", protected, h'', payload] (RFC 9052 §4.4);
    ES256 signatures are raw r||s (64 bytes, RFC 9053 §2.1) and are converted to DER here;
  - the payload schema: a map with text keys v (1), gateway, site, ward, batch (uint),
    observations (array of maps with seq, device, code, value, unit, gateway_time, ...; a
    waveform observation's optional "waveform" map: period_us > 0, finite scale and offset,
    1..4096 integer samples),
    events (array of maps with seq, device, kind, detail, gateway_time), and the optional
    locations (map of device id => location: 1..64 characters of [A-Za-z0-9._-] in non-empty
    "/"-separated parts, only for devices with rows in the batch).

With --key RECEIVER.key, every message must be encrypted to that receiver (COSE_Encrypt, see
decrypt_cose.py beside this file): it is decrypted first, then the signed message inside is
verified as above.

Usage: verify_cose.py --cert gateway.pem [--cert other.pem] [--key receiver.key] PATH...
  PATH is a message file or a directory (every *.cose inside it).

Prints one JSON line of totals on stdout:
  {"messages": N, "batches": N, "observations": N, "unique_observations": N, "events": N,
   "unique_events": N, "per_device": {device: unique observations},
   "per_location": {device: {location: unique observations}}} (a row's location is its
   device's entry in its batch's locations; rows without one are not counted there)
and one line per problem on stderr. Exit status: 0 when every message verified and every
payload matched the schema, 1 otherwise, 2 on usage errors.
"""

import argparse
import hashlib
import json
import math
import os
import sys
from collections.abc import Mapping

import cbor2
import decrypt_cose
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

COSE_SIGN1_TAG = 18
ALG_ES256 = -7
ALG_EDDSA = -8
HDR_ALG = 1
HDR_KID = 4

OBS_REQUIRED = {
    "seq": int,
    "device": str,
    "code": int,
    "value": (int, float),
    "unit": int,
    "gateway_time": int,
}
OBS_OPTIONAL = {
    "ucum": str,
    "time_quality": str,
    "device_time": str,
    "status": list,
    "waveform": Mapping,
}
# A waveform observation's sample array (docs/wire-format.md, "waveform"; IEEE 11073 RT-SA).
MAX_WAVEFORM_SAMPLES = 4096
EVENT_REQUIRED = {"seq": int, "device": str, "kind": str, "detail": str, "gateway_time": int}
EVENT_KINDS = {"connected", "disconnected", "battery", "rssi", "rejected", "error", "dropped"}
# 2001-09-09 .. 2286: a gateway_time in epoch *milliseconds*, not seconds.
MIN_EPOCH_MS = 1_000_000_000_000
MAX_EPOCH_MS = 10_000_000_000_000


class Invalid(Exception):
    pass


def load_keys(paths):
    """kid -> (alg, public key, name) for every certificate in every PEM file."""
    keys = {}
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        certs = x509.load_pem_x509_certificates(data)
        if not certs:
            raise Invalid(f"{path}: no certificate")
        for cert in certs:
            public = cert.public_key()
            spki = public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            kid = hashlib.sha256(spki).digest()
            if isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1):
                alg = ALG_ES256
            elif isinstance(public, ed25519.Ed25519PublicKey):
                alg = ALG_EDDSA
            else:
                raise Invalid(f"{path}: unsupported key type {type(public).__name__}")
            keys[kid] = (alg, public, path)
    return keys


def check_type(where, obj, key, typ, required=True):
    if key not in obj:
        if required:
            raise Invalid(f"{where}: missing key {key!r}")
        return
    value = obj[key]
    # bool is an int subclass in Python; CBOR true/false is never a valid number here.
    if isinstance(value, bool) or not isinstance(value, typ):
        raise Invalid(f"{where}: {key!r} is {type(value).__name__}, expected {typ}")


def verify_message(raw, keys):
    """Returns the decoded payload map; raises Invalid."""
    try:
        msg = cbor2.loads(raw)
    except Exception as e:  # noqa: BLE001 - any decode failure is a verification failure
        raise Invalid(f"not CBOR: {e}")
    if not isinstance(msg, cbor2.CBORTag) or msg.tag != COSE_SIGN1_TAG:
        raise Invalid("not a tagged COSE_Sign1 (CBOR tag 18)")
    body = msg.value
    # cbor2 >= 6 decodes some arrays as tuples.
    if not isinstance(body, (list, tuple)) or len(body) != 4:
        raise Invalid("COSE_Sign1 is not a 4-element array")
    protected_bstr, unprotected, payload, signature = body
    if not isinstance(protected_bstr, bytes):
        raise Invalid("protected header is not a bstr")
    # cbor2 >= 6 decodes maps inside immutable containers as its own frozendict.
    if not isinstance(unprotected, Mapping):
        raise Invalid("unprotected header is not a map")
    if payload is None:
        raise Invalid("detached payload")
    if not isinstance(payload, bytes) or not isinstance(signature, bytes):
        raise Invalid("payload or signature is not a bstr")
    protected = cbor2.loads(protected_bstr) if protected_bstr else {}
    if not isinstance(protected, Mapping):
        raise Invalid("protected header is not a map")
    alg = protected.get(HDR_ALG)
    kid = protected.get(HDR_KID)
    if not isinstance(kid, bytes):
        raise Invalid("no kid in the protected header")
    if len(kid) != 32:
        raise Invalid(f"kid has {len(kid)} bytes, expected 32 (SHA-256)")
    if kid not in keys:
        raise Invalid(f"unknown kid {kid.hex()}: not the SHA-256 of any given certificate's SPKI")
    key_alg, public, _name = keys[kid]
    if alg != key_alg:
        raise Invalid(f"protected alg {alg!r} does not match the certificate's key ({key_alg})")
    to_be_signed = cbor2.dumps(["Signature1", protected_bstr, b"", payload])
    try:
        if key_alg == ALG_ES256:
            if len(signature) != 64:
                raise Invalid(f"ES256 signature has {len(signature)} bytes, expected 64 (r||s)")
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            public.verify(encode_dss_signature(r, s), to_be_signed, ec.ECDSA(hashes.SHA256()))
        else:
            public.verify(signature, to_be_signed)
    except InvalidSignature:
        raise Invalid("bad signature")
    try:
        batch = cbor2.loads(payload)
    except Exception as e:  # noqa: BLE001
        raise Invalid(f"payload is not CBOR: {e}")
    check_payload(batch)
    return batch


def check_waveform(where, w):
    """A waveform's bounds: period_us a positive integer, scale and offset finite numbers,
    1..MAX_WAVEFORM_SAMPLES integer samples (32-bit signed)."""
    check_type(where + " waveform", w, "period_us", int)
    if isinstance(w["period_us"], bool) or w["period_us"] <= 0 or w["period_us"] > 0xFFFFFFFF:
        raise Invalid(f"{where}: waveform period_us {w['period_us']!r} is not a positive u32")
    for k in ("scale", "offset"):
        check_type(where + " waveform", w, k, (int, float))
        if not math.isfinite(w[k]):
            raise Invalid(f"{where}: waveform {k} is not finite")
    check_type(where + " waveform", w, "samples", (list, tuple))
    n = len(w["samples"])
    if not 1 <= n <= MAX_WAVEFORM_SAMPLES:
        raise Invalid(f"{where}: waveform of {n} samples (1..{MAX_WAVEFORM_SAMPLES})")
    for s in w["samples"]:
        if isinstance(s, bool) or not isinstance(s, int) or not -(2**31) <= s < 2**31:
            raise Invalid(f"{where}: waveform sample {s!r} is not a 32-bit integer")


def check_payload(batch):
    if not isinstance(batch, Mapping):
        raise Invalid("payload is not a map")
    for k in batch:
        if not isinstance(k, str):
            raise Invalid(f"payload key {k!r} is not text")
    if batch.get("v") != 1:
        raise Invalid(f"payload v is {batch.get('v')!r}, expected 1")
    for key in ("gateway", "site", "ward"):
        check_type("payload", batch, key, str)
        if not batch[key]:
            raise Invalid(f"payload {key} is empty")
    check_type("payload", batch, "batch", int)
    if batch["batch"] < 0:
        raise Invalid("payload batch is negative")
    check_type("payload", batch, "observations", (list, tuple))
    check_type("payload", batch, "events", (list, tuple))
    last_seq = None
    for i, o in enumerate(batch["observations"]):
        where = f"observation {i}"
        if not isinstance(o, Mapping):
            raise Invalid(f"{where} is not a map")
        for key, typ in OBS_REQUIRED.items():
            check_type(where, o, key, typ)
        for key, typ in OBS_OPTIONAL.items():
            check_type(where, o, key, typ, required=False)
        if o["seq"] < 0 or o["code"] < 0 or o["unit"] < 0:
            raise Invalid(f"{where}: seq, code and unit are unsigned")
        if not MIN_EPOCH_MS <= o["gateway_time"] <= MAX_EPOCH_MS:
            raise Invalid(f"{where}: gateway_time {o['gateway_time']} is not epoch milliseconds")
        if "time_quality" in o and o["time_quality"] not in ("synced", "unsynced", "device"):
            raise Invalid(f"{where}: time_quality {o['time_quality']!r}")
        if "status" in o and not all(isinstance(s, str) for s in o["status"]):
            raise Invalid(f"{where}: status holds a non-text flag")
        if "waveform" in o:
            check_waveform(where, o["waveform"])
        if last_seq is not None and o["seq"] <= last_seq:
            raise Invalid(f"{where}: seq {o['seq']} not increasing")
        last_seq = o["seq"]
    last_seq = None
    for i, e in enumerate(batch["events"]):
        where = f"event {i}"
        if not isinstance(e, Mapping):
            raise Invalid(f"{where} is not a map")
        for key, typ in EVENT_REQUIRED.items():
            check_type(where, e, key, typ)
        if e["kind"] not in EVENT_KINDS:
            raise Invalid(f"{where}: unknown kind {e['kind']!r}")
        if last_seq is not None and e["seq"] <= last_seq:
            raise Invalid(f"{where}: seq {e['seq']} not increasing")
        last_seq = e["seq"]
    check_locations(batch)


LOCATION_MAX = 64
LOCATION_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def check_locations(batch):
    """The optional "locations" map: text device ids of devices with rows in this batch, each
    mapped to a location (docs/wire-format.md, install.md 5c)."""
    if "locations" not in batch:
        return
    locs = batch["locations"]
    if not isinstance(locs, Mapping):
        raise Invalid("payload locations is not a map")
    devices = {o["device"] for o in batch["observations"]} | {e["device"] for e in batch["events"]}
    for device, loc in locs.items():
        if not isinstance(device, str) or not isinstance(loc, str):
            raise Invalid(f"locations: {device!r} => {loc!r} is not text => text")
        if device not in devices:
            raise Invalid(f"locations names device {device}, which has no row in the batch")
        if not 1 <= len(loc) <= LOCATION_MAX:
            raise Invalid(f"locations[{device}]: {len(loc)} characters (1..{LOCATION_MAX})")
        parts = loc.split("/")
        if any(not p for p in parts) or any(c not in LOCATION_CHARS for p in parts for c in p):
            raise Invalid(f"locations[{device}]: {loc!r} is not a location")


def message_files(paths):
    files = []
    for p in paths:
        if os.path.isdir(p):
            files.extend(
                os.path.join(p, n) for n in sorted(os.listdir(p)) if n.endswith(".cose")
            )
        else:
            files.append(p)
    return files


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cert", action="append", required=True, help="gateway certificate (PEM)")
    ap.add_argument("--key", help="receiver private key (PEM, P-256): decrypt first")
    ap.add_argument("paths", nargs="+", help="message files or directories of *.cose")
    args = ap.parse_args(argv)
    try:
        keys = load_keys(args.cert)
        receiver = decrypt_cose.load_receiver_key(args.key) if args.key else None
    except (OSError, ValueError, Invalid, decrypt_cose.Undecryptable) as e:
        print(f"verify_cose: {e}", file=sys.stderr)
        return 2
    files = message_files(args.paths)
    if not files:
        print("verify_cose: no message files", file=sys.stderr)
        return 1
    failures = 0
    batches = set()
    seen_obs = set()
    seen_events = set()
    per_device = {}
    per_location = {}
    n_obs = n_events = 0
    for path in files:
        try:
            with open(path, "rb") as f:
                raw = f.read()
            if receiver is not None:
                raw = decrypt_cose.decrypt(raw, *receiver)
            batch = verify_message(raw, keys)
        except (OSError, Invalid, decrypt_cose.Undecryptable) as e:
            print(f"{path}: {e}", file=sys.stderr)
            failures += 1
            continue
        gw = batch["gateway"]
        batches.add((gw, batch["batch"]))
        for o in batch["observations"]:
            n_obs += 1
            if (gw, o["seq"]) not in seen_obs:
                seen_obs.add((gw, o["seq"]))
                per_device[o["device"]] = per_device.get(o["device"], 0) + 1
                loc = batch.get("locations", {}).get(o["device"])
                if loc is not None:
                    counts = per_location.setdefault(o["device"], {})
                    counts[loc] = counts.get(loc, 0) + 1
        for e in batch["events"]:
            n_events += 1
            seen_events.add((gw, e["seq"]))
    print(
        json.dumps(
            {
                "messages": len(files),
                "verified": len(files) - failures,
                "failed": failures,
                "batches": len(batches),
                "observations": n_obs,
                "unique_observations": len(seen_obs),
                "events": n_events,
                "unique_events": len(seen_events),
                "per_device": per_device,
                "per_location": per_location,
            },
            sort_keys=True,
        )
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""Independent check of a wardgate firmware job (docs/wire-format.md "Firmware jobs").

Written against RFC 9052 and the CDDL only, sharing no code with wardgate: `cbor2` decodes,
`cryptography` checks the signature.

Checks:
  - CBOR tag 18 around [protected bstr, unprotected map, payload bstr, signature bstr];
  - protected {1: -7 (ES256) or -8 (EdDSA), 4: kid = SHA-256 of the signer certificate's SPKI,
    33: x5chain whose leaf is that certificate};
  - the signature over ["Signature1", protected, h'', payload] (ES256: raw r||s);
  - the signer certificate names a firmware signer (SAN URI urn:wardgate-firmware:NAME);
  - the payload: v == 1, a job with image.sha256 == SHA-256 of --image, image.size == its
    length, image.mcuboot_hash == --digest (imgtool verify's "Image digest").

Usage: verify_job.py --cert signer.pem --image IMAGE --digest HEX JOB
Prints {"ok": true, "job": ID, "seq": N, "signer": NAME} or exits 1 with the problem on stderr.
"""

import argparse
import hashlib
import json
import sys

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--digest", required=True)
    ap.add_argument("job")
    a = ap.parse_args()
    cert = x509.load_pem_x509_certificates(open(a.cert, "rb").read())[0]
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    msg = cbor2.loads(open(a.job, "rb").read())
    if not isinstance(msg, cbor2.CBORTag) or msg.tag != 18 or len(msg.value) != 4:
        fail("not a tagged COSE_Sign1")
    protected, _unprotected, payload, signature = msg.value
    hdr = cbor2.loads(protected)
    if hdr.get(4) != hashlib.sha256(spki).digest():
        fail("kid is not SHA-256 of the signer's SPKI")
    chain = hdr.get(33)
    leaf = chain[0] if isinstance(chain, list) else chain
    if leaf != cert.public_bytes(serialization.Encoding.DER):
        fail("x5chain leaf is not the signer certificate")
    tbs = cbor2.dumps(["Signature1", protected, b"", payload])
    key = cert.public_key()
    if hdr.get(1) == -7:
        if len(signature) != 64:
            fail("ES256 signature is not 64 bytes")
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        key.verify(der, tbs, ec.ECDSA(hashes.SHA256()))
    elif hdr.get(1) == -8:
        assert isinstance(key, ed25519.Ed25519PublicKey)
        key.verify(signature, tbs)
    else:
        fail(f"unexpected alg {hdr.get(1)}")
    uris = cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier)
    names = [u[len("urn:wardgate-firmware:"):] for u in uris if u.startswith("urn:wardgate-firmware:")]
    if not names:
        fail("the signer certificate names no firmware signer")
    job = cbor2.loads(payload)
    if job.get("v") != 1:
        fail(f"v = {job.get('v')}")
    image = open(a.image, "rb").read()
    img = job["image"]
    if img["sha256"] != hashlib.sha256(image).digest():
        fail("image.sha256 is not the file's SHA-256")
    if img["size"] != len(image):
        fail("image.size is not the file's length")
    if img["mcuboot_hash"] != bytes.fromhex(a.digest):
        fail("image.mcuboot_hash is not imgtool's digest")
    for k in ("job", "seq", "issued", "expires", "target", "policy"):
        if k not in job:
            fail(f"no {k}")
    print(json.dumps({"ok": True, "job": job["job"], "seq": job["seq"], "signer": names[0]}))


if __name__ == "__main__":
    main()

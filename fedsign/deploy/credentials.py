"""Credentials for a real Flower 1.41/1.42 deployment (docs/deployment.md):

- a certificate authority (ca.crt, ca.key) and the SuperLink's TLS certificate signed by it
  (server.pem, server.key; valid for localhost, 127.0.0.1 and the --hosts given): the SuperLink
  serves TLS with them, SuperNodes and the `flwr` CLI verify it with ca.crt (`--root-certificates`,
  `root-certificates` in the Flower configuration file);
- one EC P-384 key pair per SuperNode (supernode-<i>.key in OpenSSH private format,
  supernode-<i>.pub in OpenSSH public format): with `--enable-supernode-auth` the SuperLink accepts
  only SuperNodes whose public key was registered (`flwr supernode register supernode-<i>.pub`);
  each SuperNode signs with `--auth-supernode-private-key supernode-<i>.key`.

    python -m fedsign.deploy.credentials OUTDIR [--hosts NAME_OR_IP ...] [--supernodes N] [--days D]
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsign.errors import FedsignError

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsign"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
                 days: int, ca: bool, hosts: tuple[str, ...] = ()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    else:
        builder = (builder.add_extension(x509.SubjectAlternativeName([_alt_name(h) for h in hosts]), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    return builder.sign(signer, hashes.SHA256())


def _write(path: Path, data: bytes, secret: bool = False) -> None:
    path.write_bytes(data)
    if secret:
        os.chmod(path, 0o600)


def make_credentials(out: str | Path, hosts: tuple[str, ...] = (), supernodes: int = 2, days: int = 365) -> list[Path]:
    """Write the CA, the SuperLink's certificate and `supernodes` key pairs into `out`; returns the files."""
    out = Path(out)
    names = ["ca.crt", "ca.key", "server.pem", "server.key"]
    names += [f"supernode-{i}.{ext}" for i in range(supernodes) for ext in ("key", "pub")]
    existing = [n for n in names if (out / n).exists()]
    if existing:
        raise FedsignError(f"{out} already holds {', '.join(existing[:3])}; choose an empty folder "
                           "(credentials are never overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    pem_key = dict(encoding=serialization.Encoding.PEM, format=serialization.PrivateFormat.PKCS8,
                   encryption_algorithm=serialization.NoEncryption())
    ca_key = ec.generate_private_key(ec.SECP384R1())
    server_key = ec.generate_private_key(ec.SECP384R1())
    all_hosts = tuple(dict.fromkeys(DEFAULT_HOSTS + tuple(hosts)))
    ca_cert = _certificate("fedsign CA", ca_key, "fedsign CA", ca_key, days, ca=True)
    server_cert = _certificate(all_hosts[0] if not hosts else hosts[0], server_key, "fedsign CA", ca_key, days,
                               ca=False, hosts=all_hosts)
    _write(out / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "ca.key", ca_key.private_bytes(**pem_key), secret=True)
    _write(out / "server.pem", server_cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "server.key", server_key.private_bytes(**pem_key), secret=True)
    for i in range(supernodes):
        key = ec.generate_private_key(ec.SECP384R1())  # Flower accepts NIST EC curves for node auth
        _write(out / f"supernode-{i}.key", key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.OpenSSH,
                                                             serialization.NoEncryption()), secret=True)
        _write(out / f"supernode-{i}.pub", key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                        serialization.PublicFormat.OpenSSH)
               + f" fedsign-supernode-{i}\n".encode())
    return [out / n for n in names]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedsign.deploy.credentials",
                                     description="TLS certificates and SuperNode keys for a Flower deployment")
    parser.add_argument("out", help="folder to write into (must not hold credentials already)")
    parser.add_argument("--hosts", nargs="*", default=[],
                        help="the SuperLink's DNS names / IP addresses as SuperNodes reach it "
                             "(localhost and 127.0.0.1 are always included)")
    parser.add_argument("--supernodes", type=int, default=2, help="number of SuperNode key pairs (default 2)")
    parser.add_argument("--days", type=int, default=365, help="certificate validity in days (default 365)")
    args = parser.parse_args(argv)
    if args.supernodes < 0 or args.days < 1:
        parser.error("--supernodes must be >= 0 and --days >= 1")
    try:
        files = make_credentials(args.out, tuple(args.hosts), args.supernodes, args.days)
    except (FedsignError, OSError) as exc:
        print(f"fedsign credentials: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {len(files)} files to {args.out}: " + ", ".join(f.name for f in files))
    print("keep ca.key, server.key and supernode-*.key secret; give each SuperNode ca.crt and its own "
          "supernode-<i>.key; register each supernode-<i>.pub with `flwr supernode register`")


if __name__ == "__main__":
    main()

"""``hometier mounts ...``: register, list, show, change, remove folders, print the
Kubernetes manifests and keys, on a SQLite database; secrets never come from or go to
the command line."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
from cryptography.fernet import Fernet

from hometier.cli.main import main
from hometier.crypto import Sealer

KEY = Fernet.generate_key().decode()


@pytest.fixture
def run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOMETIER_DB", f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.setenv("HOMETIER_SECRET_KEY", KEY)
    monkeypatch.chdir(tmp_path)

    def call(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


def test_register_show_change_and_remove(run, monkeypatch):
    monkeypatch.setenv("HOMETIER_BUCKET_SECRET", "wJalrXUtnFEMI")
    code, out, err = run(
        "mounts",
        "add",
        "lab",
        "--bucket",
        "lab-data",
        "--prefix",
        "p/",
        "--endpoint",
        "https://s3.example.org",
        "--access-key-id",
        "AKIAX",
        "--access",
        "group:staff:rw",
        "--access",
        "user:guest:ro",
        "--option",
        "stat_cache_expire=30",
        "--json",
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["credentials"] == "sealed" and doc["prefix"] == "p"
    assert doc["options"] == {"stat_cache_expire": 30}
    assert "wJalrXUtnFEMI" not in out + err
    code, out, _ = run("mounts", "list", "--json")
    assert [d["name"] for d in json.loads(out)] == ["lab"]
    code, out, _ = run("mounts", "change", "lab", "--read-only", "--json")
    assert json.loads(out)["read_only"] is True and json.loads(out)["revision"] == 2
    code, out, err = run("mounts", "add", "lab", "--bucket", "other", "--anonymous")
    assert code == 4 and "already registered" in err
    code, _, err = run("mounts", "add", "x", "--bucket", "bb-b", "--option", "passwd_file=/etc/x")
    assert code == 2 and "not allowed" in err
    code, out, _ = run("mounts", "remove", "lab", "--json")
    assert code == 0 and json.loads(out) == {"removed": "lab"}
    code, _, err = run("mounts", "show", "lab")
    assert code == 3 and "No bucket folder named lab" in err


def test_without_a_secret_key_credentials_are_refused(run, monkeypatch):
    monkeypatch.delenv("HOMETIER_SECRET_KEY")
    monkeypatch.setenv("HOMETIER_BUCKET_SECRET", "s")
    code, _, err = run("mounts", "add", "lab", "--bucket", "lab-data", "--access-key-id", "A")
    assert code == 2 and "No secret key" in err
    code, _, _ = run("mounts", "add", "open", "--bucket", "open-data", "--anonymous")
    assert code == 0, "a public bucket needs no key"


def test_kubernetes_manifests_are_valid_and_secrets_only_on_request(run, monkeypatch):
    monkeypatch.setenv("HOMETIER_BUCKET_SECRET", "s3cr3t")
    run(
        "mounts",
        "add",
        "lab",
        "--bucket",
        "lab-data",
        "--access-key-id",
        "AKIAX",
        "--access",
        "group:staff:rw",
    )
    code, out, _ = run("mounts", "k8s", "--namespace", "jhub")
    items = json.loads(out)["items"]
    assert [i["kind"] for i in items] == ["PersistentVolume", "PersistentVolumeClaim"]
    assert "s3cr3t" not in out
    code, out, _ = run("mounts", "k8s", "--namespace", "jhub", "--with-secrets")
    items = json.loads(out)["items"]
    assert [i["kind"] for i in items] == ["PersistentVolume", "PersistentVolumeClaim", "Secret"]
    for item in items:
        kubernetes_validate.validate(item, "1.30.0", strict=True)


def test_keygen_prints_a_usable_key(run):
    code, out, _ = run("mounts", "keygen")
    assert (
        code == 0
        and Sealer([out.strip().encode()]).unseal(Sealer([out.strip().encode()]).seal(b"x")) == b"x"
    )

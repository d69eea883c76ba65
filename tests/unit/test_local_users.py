"""Local users (`palette user ...`): argon2id hashes in a private SQLite file; an unknown
user costs the same hash check as a wrong password; failed sign-ins and concurrent checks
are bounded."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Literal

import pytest
from argon2 import PasswordHasher
from typer.testing import CliRunner, Result

from palette import users as users_module
from palette.api.login_limits import FailedLogins, TooManyFailures, VerificationBusy, VerificationSlots
from palette.cli import app
from palette.users import LocalUsers, UserError

PASSWORD = "correct horse battery"


def test_only_an_argon2id_hash_is_stored_in_a_file_only_its_owner_reads(tmp_path: Path) -> None:
    users = LocalUsers(tmp_path)
    users.create("alice", PASSWORD)

    content = (tmp_path / "users.db").read_bytes()
    assert PASSWORD.encode() not in content
    assert b"$argon2id$" in content
    assert stat.S_IMODE(os.stat(tmp_path / "users.db").st_mode) == 0o600
    assert users.verify("alice", PASSWORD)
    assert not users.verify("alice", PASSWORD + "!")


def test_a_users_file_others_can_read_is_refused(tmp_path: Path) -> None:
    LocalUsers(tmp_path).create("alice", PASSWORD)
    os.chmod(tmp_path / "users.db", 0o644)

    with pytest.raises(PermissionError, match="chmod 600"):
        LocalUsers(tmp_path).verify("alice", PASSWORD)


def test_password_changes_and_deletes_take_effect(tmp_path: Path) -> None:
    users = LocalUsers(tmp_path)
    users.create("alice", PASSWORD)
    users.create("bob", PASSWORD)

    users.set_password("alice", "a new password")
    users.delete("bob")

    assert users.verify("alice", "a new password") and not users.verify("alice", PASSWORD)
    assert not users.verify("bob", PASSWORD)
    assert [user.name for user in users.all_users()] == ["alice"]


@pytest.mark.parametrize(
    ("name", "password", "problem"),
    [
        ("alice", "short", "at least 8 characters"),
        ("", PASSWORD, "blank"),
        (" alice", PASSWORD, "whitespace"),
        ("a#b", PASSWORD, "'#'"),
        ("x" * 129, PASSWORD, "longer than 128"),
    ],
)
def test_a_bad_name_or_password_is_refused(tmp_path: Path, name: str, password: str, problem: str) -> None:
    with pytest.raises(UserError, match=problem):
        LocalUsers(tmp_path).create(name, password)


def test_a_taken_name_and_an_unknown_user_are_refused(tmp_path: Path) -> None:
    users = LocalUsers(tmp_path)
    users.create("alice", PASSWORD)

    with pytest.raises(UserError, match="already exists"):
        users.create("alice", "another password")
    with pytest.raises(UserError, match="no user"):
        users.set_password("nobody", PASSWORD)
    with pytest.raises(UserError, match="no user"):
        users.delete("nobody")
    assert users.verify("alice", PASSWORD)  # the refused create changed nothing


def test_an_unknown_user_costs_the_same_argon2_check_as_a_wrong_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = LocalUsers(tmp_path)
    users.create("alice", PASSWORD)
    checked: list[str] = []
    real = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)

    class Counting(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
            checked.append(str(hash).split("$")[3])  # the parameters, m=...,t=...,p=...
            return real.verify(hash, password)

    monkeypatch.setattr(users_module, "PASSWORD_HASHER", Counting())

    assert not users.verify("alice", "wrong password")
    assert not users.verify("nobody", "wrong password")
    assert not users.verify(" not a name ", "wrong password")
    assert not users.verify("nobody", "palette: no such user")  # the dummy hash's own password

    assert checked == ["m=19456,t=2,p=1"] * 4


def test_the_cli_creates_lists_and_deletes_users(tmp_path: Path) -> None:
    def palette(*args: str, stdin: str = "") -> Result:
        return CliRunner().invoke(app, [*args, "--data-dir", str(tmp_path)], input=stdin)

    assert palette("user", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n").exit_code == 0
    short = palette("user", "create", "bob", "--password-stdin", stdin="short\n")
    assert short.exit_code == 2 and "at least 8 characters" in short.output
    typed = palette("user", "create", "carol", stdin="pass word 1\npass word 1\n")
    assert typed.exit_code == 0, typed.output
    mistyped = palette("user", "create", "dave", stdin="pass word 1\npass word 2\n")
    assert mistyped.exit_code != 0
    assert palette("user", "password", "alice", "--password-stdin", stdin="new password\n").exit_code == 0
    assert palette("user", "delete", "carol").exit_code == 0
    assert palette("user", "delete", "carol").exit_code == 2

    listed = palette("user", "list")
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["alice"]
    assert LocalUsers(tmp_path).verify("alice", "new password")


def test_failures_past_the_limit_refuse_until_the_oldest_leaves_the_window() -> None:
    now = [1000.0]
    failures = FailedLogins(per_name=2, per_address=10, window_seconds=60, clock=lambda: now[0])
    for _ in range(2):
        with failures.attempt("alice", "10.0.0.1"):
            pass  # a failure: the block never calls succeeded()
        now[0] += 10

    with pytest.raises(TooManyFailures) as refused, failures.attempt("alice", "10.0.0.2"):
        pass
    assert (refused.value.scope, refused.value.retry_after) == ("user", 40)

    now[0] += 40
    with failures.attempt("alice", "10.0.0.1") as succeeded:
        succeeded()
    with failures.attempt("alice", "10.0.0.1"):
        pass  # forgiven: the success cleared the name's failures


def test_a_verification_beyond_the_slots_is_refused_at_once() -> None:
    slots = VerificationSlots(total=1)
    with slots.slot():
        with pytest.raises(VerificationBusy), slots.slot():
            pass
    with slots.slot():
        pass  # released

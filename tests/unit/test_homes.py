"""User names to home folders: ``check_username`` and ``HomeLayout``.

Whatever the name and the template, ``HomeLayout.path`` either refuses the name
(``InvalidUsername``, a ``UsageError``) or returns a path strictly inside the root.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hometier.errors import UsageError
from hometier.lifecycle.homes import MAX_NAME, HomeLayout, InvalidUsername, check_username

ACCEPTED = [
    "alice",
    "Alice.Smith",
    "a-b_c",
    "user@example.com",
    "john smith",
    "~root",
    "a..b",
    "x.",
    "名前",
    "émilie",
    "ａｌｉｃｅ",  # fullwidth look-alike of alice: a different name, its own folder
    "．．",  # fullwidth full stops: not "..", a plain name
    "a∕b",  # U+2215 DIVISION SLASH: not a separator
    "a\u202eb",  # right-to-left override: odd, but a single path component
    "{username}",
    "a" * MAX_NAME,
]

REFUSED = [
    ("", "empty"),
    (".", "starts with a dot"),
    ("..", "starts with a dot"),
    ("...", "starts with a dot"),
    (".hidden", "starts with a dot"),
    (".hometier-quarantine", "starts with a dot"),
    ("../root", "path separator"),
    ("a/b", "path separator"),
    ("/etc", "path separator"),
    ("a\\b", "path separator"),
    ("x\0y", "NUL"),
    ("\0", "NUL"),
    ("a\nb", "control characters"),
    ("tab\there", "control characters"),
    ("del\x7f", "control characters"),
    ("line\u2028sep", "control characters"),
    ("para\u2029sep", "control characters"),
    ("surrogate\udcff", "control characters"),
    ("a" * (MAX_NAME + 1), "longer than 255"),
    ("a" * 300, "longer than 255"),
]


@pytest.mark.parametrize("user", ACCEPTED)
def test_accepted_names_map_inside_the_root(user: str, tmp_path: Path) -> None:
    assert check_username(user) == user
    layout = HomeLayout(tmp_path)
    path = layout.path(user)
    assert path.parent == layout.root
    assert path.name == user


@pytest.mark.parametrize(("user", "why"), REFUSED)
def test_refused_names(user: str, why: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidUsername, match=why) as info:
        check_username(user)
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2
    with pytest.raises(InvalidUsername):
        HomeLayout(tmp_path).path(user)


def test_a_long_name_is_shortened_in_the_message() -> None:
    with pytest.raises(InvalidUsername) as info:
        check_username("b" * 300)
    assert len(info.value.get_message()) < 120


def test_fullwidth_look_alike_is_its_own_home(tmp_path: Path) -> None:
    layout = HomeLayout(tmp_path)
    assert layout.path("ａｌｉｃｅ") != layout.path("alice")
    assert layout.path("ａｌｉｃｅ").parent == layout.path("alice").parent == tmp_path


@pytest.mark.parametrize(
    ("template", "rel"),
    [
        ("{username}", "alice"),
        ("{username}/home", "alice/home"),
        ("users/{username}", "users/alice"),
        ("u-{username}-home", "u-alice-home"),
        ("{username}/./work", "alice/work"),
        ("x/../{username}", "alice"),
    ],
)
def test_templates(template: str, rel: str, tmp_path: Path) -> None:
    assert HomeLayout(tmp_path, template).path("alice") == tmp_path / rel


@pytest.mark.parametrize(
    "template", ["../{username}", "{username}/..", "{username}/../..", "/etc/{username}", "."]
)
def test_templates_that_leave_the_root_are_refused(template: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidUsername, match="outside"):
        HomeLayout(tmp_path, template).path("alice")


@pytest.mark.parametrize(
    ("template", "name", "home"),
    [
        ("{username}", "alice", True),
        ("{username}", ".hometier-quarantine", False),
        ("{username}", "a\nb", False),
        ("users/{username}", "alice", False),  # alice's home is users/alice, not alice
        ("u-{username}-home", "u-alice-home", False),
        ("x/../{username}", "alice", True),
    ],
)
def test_maps_back_says_whether_a_folder_is_its_namesakes_home(
    template: str, name: str, home: bool, tmp_path: Path
) -> None:
    layout = HomeLayout(tmp_path, template)
    assert layout.maps_back(name) is home
    assert layout.maps_back(name) is home  # the remembered answer is the same


def test_a_relative_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    layout = HomeLayout("homes")
    assert layout.root == tmp_path / "homes"
    assert layout.path("bob") == tmp_path / "homes" / "bob"


HOSTILE = [
    *ACCEPTED,
    *(u for u, _ in REFUSED),
    "..\\..",
    "%2e%2e",
    "%2F",
    "$HOME",
    "*",
    " ",
    " .. ",
    "..\u200b",
    "\u2024\u2024",  # ONE DOT LEADER twice
    "\uff0e\uff0e/\uff0e\uff0e",
]
TEMPLATES = ["{username}", "{username}/home", "homes/{username}", "{username}{username}"]


@pytest.mark.parametrize("template", TEMPLATES)
def test_never_a_path_outside_the_root(template: str, tmp_path: Path) -> None:
    root = tmp_path / "homes"
    layout = HomeLayout(root, template)
    for user in HOSTILE:
        try:
            path = layout.path(user)
        except InvalidUsername:
            continue
        assert root in path.parents, (user, path)
        assert os.path.normpath(path) == str(path)
        assert os.path.commonpath([root, path]) == str(root)

"""What a new password may not be: one of the most common passwords, or the email itself.

A small local deny-list (no network, no breach corpus): the passwords that lead every
published list of leaked passwords, each at least 8 characters (shorter ones fail the
length rule first), compared case-insensitively.
"""

from __future__ import annotations

__all__ = ["COMMON_PASSWORDS", "password_problem"]

COMMON_PASSWORDS = frozenset(
    [
        "12345678",
        "123456789",
        "1234567890",
        "12345678910",
        "0123456789",
        "87654321",
        "987654321",
        "11111111",
        "00000000",
        "88888888",
        "99999999",
        "12341234",
        "11223344",
        "123123123",
        "147258369",
        "123qweasd",
        "1q2w3e4r",
        "1q2w3e4r5t",
        "1qaz2wsx",
        "1qazxsw2",
        "qazwsxedc",
        "zaq12wsx",
        "qwertyui",
        "qwertyuiop",
        "qwerty123",
        "qwerty1234",
        "asdfghjkl",
        "asdfasdf",
        "zxcvbnm1",
        "zxcvbnmasd",
        "password",
        "password1",
        "password12",
        "password123",
        "password1234",
        "passw0rd",
        "p@ssw0rd",
        "p@ssword",
        "pa55word",
        "passwort",
        "motdepasse",
        "contraseña",
        "iloveyou",
        "iloveyou1",
        "sunshine",
        "sunshine1",
        "princess",
        "princess1",
        "football",
        "football1",
        "baseball",
        "baseball1",
        "superman",
        "batman123",
        "starwars",
        "trustno1",
        "whatever",
        "whatever1",
        "welcome1",
        "welcome123",
        "letmein1",
        "letmein123",
        "abc12345",
        "abcd1234",
        "abcdefgh",
        "aa123456",
        "a1234567",
        "a12345678",
        "admin123",
        "administrator",
        "adminadmin",
        "changeme",
        "changeme1",
        "secret123",
        "monkey123",
        "dragon123",
        "master123",
        "shadow123",
        "michael1",
        "jennifer",
        "jordan23",
        "computer",
        "internet",
        "charlie1",
        "freedom1",
        "liverpool",
        "chelsea1",
        "arsenal1",
        "mustang1",
        "qwer1234",
        "asdf1234",
        "zxcv1234",
        "loveyou1",
        "lovelove",
        "1234qwer",
        "q1w2e3r4",
        "q1w2e3r4t5",
        "123abc123",
        "abc123456",
        "test1234",
        "testtest",
        "12qwaszx",
        "google123",
        "samsung1",
        "pokemon1",
        "naruto123",
        "minecraft",
        "fuckyou1",
        "hello123",
        "hellohello",
        "parley123",
        "parleypass",
    ]
)


def _plain(text: str) -> str:
    return text.strip().casefold()


def password_problem(password: str, email: str | None) -> str | None:
    """Why ``password`` is refused, or None when it may be used."""
    plain = _plain(password)
    if plain in COMMON_PASSWORDS:
        return "password: too common; choose another"
    if email:
        address = _plain(email)
        local = address.partition("@")[0]
        if plain in {address, local} or (len(local) >= 4 and plain in {local + "1", local + "123"}):
            return "password: must not be the email address"
    return None

from server.net import forwarded_ip


def test_rightmost_forwarded_entry_when_trusted() -> None:
    # the client wrote "1.2.3.4"; our proxy appended the address it saw
    assert forwarded_ip("1.2.3.4, 203.0.113.9", "10.0.0.2", trust_proxy=True) == "203.0.113.9"
    assert forwarded_ip("203.0.113.9", "10.0.0.2", trust_proxy=True) == "203.0.113.9"
    assert forwarded_ip("", "10.0.0.2", trust_proxy=True) == "10.0.0.2"
    assert forwarded_ip("1.2.3.4", "10.0.0.2", trust_proxy=False) == "10.0.0.2"
    assert forwarded_ip("", None, trust_proxy=False) is None

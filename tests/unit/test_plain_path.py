"""Test plugin k0s_plain_path: what the service and cluster roles accept as k0s_join_token_path."""
import pytest

from ansible_collections.fleetsplit.k0s.plugins.test.k0s_paths import k0s_plain_path


@pytest.mark.parametrize("path", ["/etc/k0s/k0stoken", "/a", "/var/lib/k0s-1.2/tok_en", "/x/.hidden"])
def test_plain(path):
    assert k0s_plain_path(path)


@pytest.mark.parametrize("path", ["", "/", "etc/k0s/t", "/etc/../root/t", "/etc/./t", "/etc/k0s/..", "//etc/t",
                                  "/etc/k0s/t ok", "/etc/k0s/$t", "/etc/k0s/t\n", "/etc/k0s/t'", None, 5])
def test_not_plain(path):
    assert not k0s_plain_path(path)

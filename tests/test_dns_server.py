"""The authoritative DNS fixture the mail-authentication tests stand on answers as a real
name server does: records, NXDOMAIN, NODATA, and silence below a dead delegation."""

from __future__ import annotations

import asyncio

import dns.asyncresolver
import dns.exception
import dns.rcode
import dns.resolver
import pytest

from tests.dns_server import run_nsd, silent_nameserver


def test_nsd_serves_records_nxdomain_nodata_and_a_silent_delegation(tmp_path):
    zones = {
        "example.test": ['@ TXT "v=spf1 ip4:192.0.2.1 -all"',
                         "mail A 192.0.2.1"],
    }
    with run_nsd(tmp_path, zones) as server:
        txt = server.query("example.test", "TXT")
        assert txt.rcode() == dns.rcode.NOERROR
        assert b"v=spf1 ip4:192.0.2.1 -all" in txt.answer[0][0].strings[0]
        assert server.query("missing.example.test", "A").rcode() == dns.rcode.NXDOMAIN
        nodata = server.query("mail.example.test", "TXT")
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer

        async def ask() -> None:
            resolver = server.resolver(timeout=1.0)
            answer = await resolver.resolve("mail.example.test", "A")
            assert [r.address for r in answer] == ["192.0.2.1"]
            with pytest.raises(dns.resolver.NXDOMAIN):
                await resolver.resolve("missing.example.test", "A")

        asyncio.run(ask())
        assert isinstance(server.resolver(), dns.asyncresolver.Resolver)
        assert server.nameserver == f"127.0.0.1:{server.port}"


def test_silent_nameserver_times_out():
    async def ask(address: str) -> None:
        host, port = address.split(":")
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers, r.port, r.lifetime = [host], int(port), 0.3
        with pytest.raises(dns.exception.Timeout):
            await r.resolve("example.test", "TXT")

    with silent_nameserver() as address:
        asyncio.run(ask(address))

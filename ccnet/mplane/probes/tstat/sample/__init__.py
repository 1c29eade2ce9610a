"""A small recorded tstat log sample (package data), replayed when tstat is not running.

The two ``log_tcp_complete`` files hold flows recorded by tstat on 2014-05-14 (one with
the core + end-to-end sets, one with the core set only), as published in the mPlane
RI's tstat proxy documentation. ``log_http_complete`` holds a real HTTP exchange on
loopback (curl and twisted.web, 2026-11-25: keep-alive page loads, a redirect, a byte
range, a 404 and a POST) recorded by ``scripts/record-tstat-http-sample.py`` and laid out
in tstat 3.x's ``log_http_complete`` format (tstat itself did not run). Nothing in them
is made up.
"""

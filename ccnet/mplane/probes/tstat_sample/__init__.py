"""A small recorded tstat log sample (package data), replayed when tstat is not running.

The two ``log_tcp_complete`` files hold flows recorded by tstat on 2014-05-14 (one with
the core + end-to-end sets, one with the core set only), as published in the mPlane
RI's tstat proxy documentation. Nothing in them is made up.
"""

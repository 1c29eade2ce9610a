"""The operator web console on the supervisor's mutual-TLS listener (``/console/``).

:mod:`ccnet.console.sources` (what the parts show it), :mod:`ccnet.console.views` and
:mod:`ccnet.console.chart` (pure: data in, HTML/SVG out), :mod:`ccnet.console.resource`
(the thin twisted.web resource: admin check, CSRF check, submissions through the
supervisor's state). See docs/console.md.
"""

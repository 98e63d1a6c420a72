"""`unlearn stream`: sequential forget requests applied to one resident model, each exactly once.

requests.py (JSONL requests, the synthetic generator, `--follow`), sources.py (MUSE-News `sust`, TOFU's nested
splits), ledger.py (the SQLite WAL ledger and audit trail), policy.py (one at a time / coalesce), worker.py (the
resident Ray Train function), driver.py (`run_stream`), drift.py (drift and the resurgence matrix), report.py and
plots.py (stream_summary.json, stream_report.md, PNGs). Nothing here imports torch or Ray at module level.
"""

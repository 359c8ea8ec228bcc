"""End-to-end test harness: real mitmdump/mitmweb subprocesses and a canned upstream server.

- `harness.mitm`: start_mitmdump, start_mitmweb, raw_exchange, split_response, find_exe
- `harness.canned`: CannedServer, RawResponse, ReceivedRequest
"""

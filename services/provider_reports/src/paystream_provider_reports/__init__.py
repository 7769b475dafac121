"""What providers report after the call, applied to transactions.

Two processes share this package because they share its rules and its code path
(`apply.apply_reports`): the callback worker (`paystream worker callback`, reports the
providers push) and the reconciler (`paystream worker reconciler`, reports it pulls with
status lookups when a callback is late or lost).
"""

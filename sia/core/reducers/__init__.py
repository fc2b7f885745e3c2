"""Pure reducers: fold events into LoopState and its Ledger."""

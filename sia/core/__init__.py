"""The pure core: events, the reducers that fold them, and `decide`, which maps a state to the
next effects. Nothing here performs I/O, reads a clock or draws randomness (an import contract in
`.importlinter` checks it), so replaying a log through the core is deterministic."""

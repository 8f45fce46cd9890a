"""TorchServe handlers: a thin class over the server-agnostic contract (`contract`), its types, shared answer
helpers and one adapter per model kind. May import only torch, the standard library, TorchServe's `ts` and
`training.nn` (an archive carries exactly these)."""

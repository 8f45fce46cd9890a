"""The handler's default request bounds, stated once: `handlers/types.py` `Limits` takes them as its defaults,
the archive's model config writes them, `make score` refuses what the server would refuse, and a model card
states them. An archive's model config may change them for that archive."""

MAX_INSTANCES = 256  # per request
MAX_STEPS = 1000  # per sequence
MAX_ABS_Z = 1e6  # inputs within the training data's mean ± this many standard deviations
MAX_REQUEST_MMAC = 5_000.0  # compute one request may need (about 2.5 s on one slow core)
MAX_BATCH_MMAC = 20_000.0  # compute one batch may hold; the costliest requests beyond it get 503
MAX_RESPONSE_BYTES = 4_000_000  # per answer; TorchServe drops a worker past max_response_size

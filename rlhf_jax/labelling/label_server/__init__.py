"""Human labelling: a web app over SQLite, the human labeller, label-format export/import.

    python -m rlhf_jax.labelling.label_server --db labels.sqlite --port 8080     # serve
    python -m rlhf_jax.labelling.label_server --db labels.sqlite export --format lhp --out labels.json
    python -m rlhf_jax.labelling.label_server --db labels.sqlite import --format sff comparisons.jsonl

* `db`: the storage (`LabelDB`): items, answers (labeller id and time), skips,
  registered labellers (each with a token of their own).
* `app`: the Flask app (`create_app`): best-of-K or pairwise choice, token
  span marks, skip, keyboard shortcuts, progress; access by the labellers'
  own tokens, a shared token, or loopback only.
* `server`: `make_server`, the app on waitress, set up against slow clients
  (a deadline per request, a cap on connections waiting for their client,
  whole-body 413, tokens out of the access log).
* `queue`: `HumanQueue`, the labeller the online loop uses with people.
* `formats`: export to / import from LHP label JSON and SFF comparisons.
"""

from rlhf_jax.labelling.label_server.app import create_app
from rlhf_jax.labelling.label_server.db import (Answer, Conflict, InvalidAnswer, Item, LabelDB,
                                                LabelError, Response, StorageError, UnknownItem,
                                                word_pieces)
from rlhf_jax.labelling.label_server.formats import export_lhp, export_sff, import_lhp, import_sff
from rlhf_jax.labelling.label_server.queue import HumanQueue, LabelingStopped
from rlhf_jax.labelling.label_server.server import make_server

__all__ = [
    "Answer", "Conflict", "HumanQueue", "InvalidAnswer", "Item", "LabelDB", "LabelError",
    "LabelingStopped", "Response", "StorageError", "UnknownItem", "create_app", "export_lhp",
    "export_sff", "import_lhp", "import_sff", "make_server", "word_pieces",
]

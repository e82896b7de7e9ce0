"""Ad-hoc, not part of the project: TwinBERT with towers of two depths, the query tower QUERY_LAYERS deep (what
serving runs per request) and the keyword tower --num-layers deep (run offline, its vectors cached). It patches
the model's constructor so that a model with separate encoders gets a query encoder of the pretrained lower
QUERY_LAYERS layers, then runs training.distill or training.evaluate with the arguments that follow:

    python reports/runs/epyc-2026-12-07-student-depth/asym.py QUERY_LAYERS distill ARGS... --separate-encoders
    python reports/runs/epyc-2026-12-07-student-depth/asym.py QUERY_LAYERS evaluate ARGS...

The checkpoint's config.json records --num-layers (the keyword tower's) only, so it loads right only here.
"""
import sys

from training import twin

query_layers, command, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
build = twin.TwinBERT.__init__


def build_asymmetric(self, config, pretrained=True):
    build(self, config, pretrained)
    if not config.shared_encoders:
        self.query_encoder = twin.Encoder(query_layers, pretrained)


twin.TwinBERT.__init__ = build_asymmetric
if command == "distill":
    from training.distill import main
else:
    from training.evaluate import main
main(args)

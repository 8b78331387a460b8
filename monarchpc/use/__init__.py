"""Using a trained run: loading it, codecs of its data, exact queries, the sample/score
commands and lossless compression."""

"""verify.py's batch app around the exact solver (certtrain.verify): its config, loading networks
and run folders, the per-sample batch with resume, the reference columns, the summaries, and
VNN-LIB / ONNX inputs. The solver itself imports nothing from here."""

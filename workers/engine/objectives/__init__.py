"""Pretraining objectives, plug-ins of the one loop (loop.py): mlm, clm and mlm_nsp."""

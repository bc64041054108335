"""Process: the job lifecycle and lease, the worker, archived series to volumes, the
plausibility gate and the result objects (SR, SEG, key images).
"""

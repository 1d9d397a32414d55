"""Molecular design: active learning over a space of molecules with real xTB calculations.

Write a :class:`~steersman.apps.moldesign.spec.Spec`, then ``steersman run spec.py:spec``.
"""

"""``gateway bench``: the real gateway process measured from outside, scenario by scenario.
"""

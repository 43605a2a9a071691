"""hark.bench"""

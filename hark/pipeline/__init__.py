"""hark.pipeline"""

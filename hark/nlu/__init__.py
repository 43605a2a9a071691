"""hark.nlu"""

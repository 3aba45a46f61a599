"""placeholder"""
class IndexFlat: pass
IndexFlatL2 = IndexFlatIP = IndexFlatCosine = IndexFlat

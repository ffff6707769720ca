"""vidiff.pipelines"""

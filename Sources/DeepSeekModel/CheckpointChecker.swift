import SafeTensors

/// The checker's verdict on a checkpoint against its config.
public struct CheckReport: Sendable {
    /// Every disagreement found, in model order; empty when the checkpoint is complete and consistent.
    public let problems: [DeepSeekModelError]
    public var isValid: Bool { problems.isEmpty }
}

/// Checks that every tensor the config implies is present with the right shape and a real-valued
/// dtype, and that nothing unexpected is there.
public enum CheckpointChecker {
    public static func check(config: DeepSeekConfig, checkpoint: Checkpoint) -> CheckReport {
        var problems: [DeepSeekModelError] = []
        let expected = config.expectedTensors()
        var expectedNames = Set<String>()
        for tensor in expected {
            expectedNames.insert(tensor.name)
            guard let info = checkpoint.info(tensor.name) else {
                problems.append(.missingTensor(file: checkpoint.directory.path, tensor: tensor.name, expectedShape: tensor.shape))
                continue
            }
            let file = checkpoint.path(of: tensor.name)
            if info.shape != tensor.shape {
                problems.append(.wrongShape(file: file, tensor: tensor.name, expected: tensor.shape, actual: info.shape))
            } else if info.dtype.isBlockFP8 {
                // FP8 weights need their block scales, of the shape the block size implies.
                guard let q = config.quantization, tensor.shape.count >= 2 else {
                    problems.append(.fp8WithoutQuantizationConfig(file: file, tensor: tensor.name))
                    continue
                }
                if info.dtype != q.format.dtype {
                    problems.append(.fp8FormatMismatch(file: file, tensor: tensor.name, dtype: info.dtype.rawValue, fmt: q.format.rawValue))
                }
                let scaleName = tensor.name + QuantizationConfig.scaleSuffix
                let scaleShape = QuantizationConfig.scaleShape(of: tensor.shape, block: q.block)
                expectedNames.insert(scaleName)
                if let scale = checkpoint.info(scaleName) {
                    if scale.shape != scaleShape || scale.dtype != .f32 {
                        problems.append(.wrongScale(file: checkpoint.path(of: scaleName), tensor: scaleName, expected: scaleShape, actual: scale.shape, dtype: scale.dtype.rawValue))
                    }
                } else {
                    problems.append(.missingScale(file: file, tensor: tensor.name, expectedShape: scaleShape))
                }
            } else if !info.dtype.isFloatingPoint {
                problems.append(.wrongDType(file: file, tensor: tensor.name, dtype: info.dtype.rawValue))
            }
        }
        for info in checkpoint.tensors where !expectedNames.contains(info.name) {
            // transformers drops a tied lm_head on load; a stray copy is not an error.
            if info.name == TensorNames.lmHead, config.tieWordEmbeddings { continue }
            if TensorNames.isIgnoredBuffer(info.name) { continue }
            problems.append(.unexpectedTensor(file: checkpoint.path(of: info.name), tensor: info.name))
        }
        return CheckReport(problems: problems)
    }
}

import DeepSeekModel
import Foundation
import SafeTensors

/// Opens a checkpoint directory for the forward pass, after checking it against its config.
///
/// A `dsconvert shard` output (device-*/ beside placement.json) opens as one model whose routed
/// experts are read from the device that holds them (expert parallelism).
public enum ModelLoader {
    public static func open(_ directory: URL) throws -> LoadedModel {
        let fm = FileManager.default
        let firstDevice = directory.appendingPathComponent("device-0")
        if fm.fileExists(atPath: directory.appendingPathComponent("placement.json").path), fm.fileExists(atPath: firstDevice.path) {
            return try openSharded(directory)
        }
        let checkpoint = try Checkpoint(directory: directory)
        let config = try DeepSeekConfig.load(directory: directory).matching(checkpoint)
        let report = CheckpointChecker.check(config: config, checkpoint: checkpoint)
        if let first = report.problems.first { throw first }
        return try LoadedModel(label: directory.path, config: config, weights: CheckpointWeights(checkpoint: checkpoint, fp8Block: config.quantization?.block))
    }

    private static func openSharded(_ directory: URL) throws -> LoadedModel {
        var devices: [CheckpointWeights] = []
        var global: DeepSeekConfig?
        var placement: ExpertPlacement?
        var mtpAbsent = false
        var d = 0
        while true {
            let url = directory.appendingPathComponent("device-\(d)")
            guard FileManager.default.fileExists(atPath: url.path) else { break }
            let checkpoint = try Checkpoint(directory: url)
            var config = try DeepSeekConfig.load(directory: url)
            // Device 0 holds the dense weights, MTP's among them: whether the MTP layers are absent is decided there.
            if d == 0 { mtpAbsent = config.declaredMTPLayersWithoutWeights(in: checkpoint) > 0 }
            config = config.withoutMTPLayers(mtpAbsent, model: directory.path)
            guard let record = config.placement, record.rank == d else {
                throw DeepSeekModelError.invalidConfig(path: url.appendingPathComponent("config.json").path, reason: "no dsconvert_placement record for rank \(d)")
            }
            if let first = CheckpointChecker.check(config: config, checkpoint: checkpoint).problems.first { throw first }
            devices.append(CheckpointWeights(checkpoint: checkpoint, fp8Block: config.quantization?.block))
            // Experts are looked up with one placement: every device must state the same one.
            if let first = placement, first != record.placement {
                throw DeepSeekModelError.inconsistentPlacement(path: url.appendingPathComponent("config.json").path, reason: "placement differs from device-0's")
            }
            placement = record.placement
            if d == 0 {
                var g = config
                g.placement = nil
                global = g
            }
            d += 1
        }
        guard let config = global, let placement, placement.devices == devices.count else {
            throw DeepSeekModelError.invalidConfig(path: directory.path, reason: "device directories do not match placement.json")
        }
        return try LoadedModel(label: directory.path, config: config,
                               weights: ExpertParallelWeights(devices: devices, placement: placement, label: directory.path), placement: placement)
    }
}

/// Weights of a sharded output: each routed expert from the device that holds it, everything else
/// from device 0 (which holds the non-expert weights whether they are replicated or written once).
public final class ExpertParallelWeights: WeightProvider {
    public let devices: [CheckpointWeights]
    public let placement: ExpertPlacement
    public let label: String

    init(devices: [CheckpointWeights], placement: ExpertPlacement, label: String) {
        self.devices = devices
        self.placement = placement
        self.label = label
    }

    private func owner(_ name: String) -> CheckpointWeights {
        TensorNames.expertIndex(of: name).map { devices[placement.device(ofExpert: $0)] } ?? devices[0]
    }

    public func floats(_ name: String, shape: [Int]) throws -> [Float] { try owner(name).floats(name, shape: shape) }
    public func release(_ name: String) { owner(name).release(name) }
    public func rows(_ name: String, shape: [Int], range: Range<Int>) throws -> [Float] { try owner(name).rows(name, shape: shape, range: range) }
    public func floats(_ name: String, shape: [Int], into destination: UnsafeMutableBufferPointer<Float>) throws {
        try owner(name).floats(name, shape: shape, into: destination)
    }
    public func rows(_ name: String, shape: [Int], range: Range<Int>, into destination: UnsafeMutableBufferPointer<Float>) throws {
        try owner(name).rows(name, shape: shape, range: range, into: destination)
    }

    /// Each device's share of `names`, read by that device's prefetcher.
    public func prefetch(_ names: [String]) {
        for (d, device) in devices.enumerated() { device.prefetch(names.filter { owner($0) === devices[d] }) }
    }

    /// Rows of `name` requested from the device that holds it.
    public func willNeedRows(_ name: String, shape: [Int], rows: [Int]) { owner(name).willNeedRows(name, shape: shape, rows: rows) }

    /// The stored form of `name` from the device that holds it.
    public func stored(_ name: String, shape: [Int]) throws -> StoredWeight? { try owner(name).stored(name, shape: shape) }

    /// Each device's share of `names`, retired from that device's prefetcher.
    public func retire(_ names: [String]) {
        for (d, device) in devices.enumerated() { device.retire(names.filter { owner($0) === devices[d] }) }
    }

    public func prefetchTotals() -> WeightPrefetcher.Totals {
        devices.map { $0.prefetchTotals() }.reduce(WeightPrefetcher.Totals(), +)
    }
}

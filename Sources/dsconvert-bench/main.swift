import CLI
import DSConvertCommands
import Foundation

exit(Entry.front(tool: "dsconvert-bench", abstract: "Benchmarks of dsconvert (run from a release build).",
                              commands: [ForwardBenchCommand.self, GenerateBenchCommand.self, ConvertBenchCommand.self, ValidateBenchCommand.self, TokenizeBenchCommand.self]))

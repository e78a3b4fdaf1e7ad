import CLI
import DSConvertCommands
import Foundation

exit(Entry.single(ExportCommand.self, invocation: "dsconvert-export"))

import jadx.api.JadxArgs;
import jadx.core.clsp.ClsSet;
import jadx.core.clsp.ClspClass;
import jadx.core.clsp.ClspMethod;
import jadx.core.dex.instructions.args.ArgType;
import jadx.core.dex.nodes.RootNode;
import java.io.BufferedWriter;
import java.io.OutputStreamWriter;
import java.nio.charset.StandardCharsets;
import java.util.Map;
import java.util.TreeMap;

/**
 * Prints jadx's Android framework signature database (clst/core.jcst in the jadx jar) as text:
 * "C <class> <parent>..." then "M <name(args)ret>" lines for that class's methods.
 * Run: java -cp jadx.jar:. ApiDump > framework-api.txt
 */
public final class ApiDump {
    private ApiDump() {}

    public static void main(String[] args) throws Exception {
        ClsSet set = new ClsSet(new RootNode(new JadxArgs()));
        set.loadFromClstFile();
        Map<String, ClspClass> classes = new TreeMap<>();
        set.addToMap(classes);
        BufferedWriter out = new BufferedWriter(new OutputStreamWriter(System.out, StandardCharsets.UTF_8));
        for (ClspClass c : classes.values()) {
            out.write("C " + c.getName());
            if (c.getParents() != null) {
                for (ArgType p : c.getParents()) {
                    out.write(" " + (p.isGeneric() ? p.getObject() : p.toString()));
                }
            }
            out.newLine();
            for (ClspMethod m : c.getSortedMethodsList()) {
                out.write("M " + m.getMethodInfo().getShortId());
                out.newLine();
            }
        }
        out.flush();
    }
}

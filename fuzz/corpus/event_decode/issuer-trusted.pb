2^
$01a214fc-9fad-73ad-a62a-85e6348fde31cihttps://ci.example"airlock*sub2groups:workload